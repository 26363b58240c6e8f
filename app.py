#!/usr/bin/env python3
"""oncopipe CDK app: ``cdk synth|deploy -c env=dev|prod``."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stacks.app_factory import build_app

build_app().app.synth()
