"""Lexicons, patterns and normalisers of the notes pipeline, kept free of spaCy.

Everything here is data or a pure function: :mod:`oncopipe.notes.nlp` turns the
:class:`RuleSpec` list into medspaCy ``TargetRule``s and calls :func:`normalise` on each match;
:mod:`oncopipe.notes.scrub` reads the name lexicons and :data:`CLINICAL_WORDS` (the words it must
never scrub). Patterns are matched case-insensitively unless a ``(?-i:...)`` group says otherwise.

Normalised values (the row schema of :mod:`oncopipe.notes.nlp`):

* ``histology``: lower-case canonical name; ``NSCLC`` is ``non-small cell carcinoma``.
* ``stage``: an AJCC group (``IIIA``) or, for a TNM mention, the TNM string with whitespace
  removed and prefixes kept (``pT2a pN2`` -> ``pT2apN2``); a group is only ever roman
  numerals plus a letter/digit, so the two kinds are told apart by :func:`is_tnm`.
* ``ecog``: the grade as text, ``numeric_value`` the same number; a range (``0-1``) is its
  worse grade.
* ``biomarker``: ``GENE ALTERATION`` (``KRAS G12C``, ``EGFR exon 19 deletion``, ``ALK fusion``,
  ``HER2 amplification``, ``STK11 loss``); a gene-level result without a named alteration is
  ``GENE mutation`` (``GENE fusion`` for ALK/ROS1/RET/NTRK); ``PD-L1`` carries the percentage
  in ``numeric_value``, and ``<1 %`` is stored as 0 so that the clinical cut-offs (1 %, 50 %)
  still sort it correctly.
* ``smoking``: ``current``/``former``/``never``; pack-years go to ``numeric_value``.
* ``metastasis``: the site (``brain``, ``liver``, ``bone``, ``adrenal``, ``pleura``,
  ``lymph node``, ``lung``, ...), ``any`` when the mention names no site.
* ``therapy``: the generic drug name in lower case (brands and abbreviations mapped), or one
  of ``radiation``, ``sbrt``, ``chemoradiation``, ``srs``, ``wbrt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# --- name lexicons (for scrubbing) --------------------------------------------------------------
# A modest list of common first names and surnames, including every name of
# sample_people.FIRST_NAMES/LAST_NAMES and the note generator's. Names that are also common English
# or clinical words (Will, May, Hope, Rose, Mark, Brown, White, Young, King, Stone, Lane...) are
# left out on purpose: they are scrubbed only in context (after a title, in a "Name:" field,
# next to a known name, before ", MD"), so "White blood cells" and "Hope to..." survive.

_FIRST = """
maria john aiko lars fatima pedro grace omar james robert michael william david richard joseph
thomas charles christopher daniel matthew anthony donald steven paul andrew joshua kenneth kevin
brian george edward ronald timothy jason jeffrey ryan jacob gary nicholas eric jonathan stephen
larry justin scott brandon benjamin samuel gregory alexander patrick raymond dennis jerry tyler
aaron jose henry adam douglas nathan peter zachary kyle walter harold jeremy ethan carl keith
roger gerald christian terry sean arthur austin noah lawrence jesse joe bryan billy albert dylan
bruce willie gabriel alan juan logan wayne ralph eugene randy vincent russell louis philip
bobby johnny bradley mary patricia jennifer linda elizabeth barbara susan jessica sarah karen
nancy lisa betty margaret sandra ashley kimberly emily donna michelle dorothy carol amanda
melissa deborah stephanie rebecca sharon laura cynthia kathleen amy shirley angela helen anna
brenda pamela nicole emma samantha katherine christine debra rachel catherine carolyn janet
ruth heather diane julie joyce victoria olivia kelly christina lauren joan evelyn judith megan
cheryl andrea hannah martha jacqueline frances gloria ann teresa kathryn sara janice jean alice
madison doris abigail julia judy beverly denise marilyn danielle theresa sophia marie diana
brittany natalie isabella charlotte alexis kayla yuki hiroshi kenji mei wei priya rahul anil
sunita ahmed mohammed ali hassan aisha layla yusuf ngozi chidi emeka kwame keisha jamal lars
sven ingrid astrid nils carlos luis miguel sofia lucia camila diego javier elena ivan olga
dmitri natasha francois pierre amelie giulia marco luca hans klaus greta ingeborg tomas
"""
_LAST = """
keller okafor tanaka lindqvist haddad silva moreau ivanova smith johnson williams jones garcia
miller davis rodriguez martinez hernandez lopez gonzalez wilson anderson taylor moore jackson
martin lee perez thompson harris sanchez clark ramirez lewis robinson walker allen wright
torres nguyen flores adams nelson hall rivera campbell mitchell carter roberts gomez phillips
evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy rogers
gutierrez ortiz morgan cooper peterson bailey reed howard ramos kim cox richardson watson
brooks chavez bennett mendoza ruiz hughes alvarez castillo sanders patel myers ross foster
jimenez powell jenkins perry sullivan coleman butler henderson barnes gonzales fisher vasquez
simmons romero patterson hamilton graham reynolds griffin wallace cole hayes bryant herrera
gibson ellis tran medina aguilar stevens murray castro marshall owens harrison fernandez
mcdonald washington kennedy wells vargas chen freeman webb tucker guzman crawford olson
simpson porter gordon mendez shaw snyder dixon munoz hicks holmes palmer wagner robertson
boyd salazar warren meyer schmidt garza daniels ferguson nichols stephens soto weaver gardner
payne dunn kelley spencer hawkins arnold pierce vazquez hansen peters santos hart knight
elliott cunningham duncan armstrong hudson carroll riley andrews alvarado delgado perkins
hoffman johnston matthews pena richards contreras willis carpenter sandoval okonjo mensah
khalil nasser sato suzuki takahashi watanabe yamamoto nakamura kobayashi wang zhang liu yang
huang zhao singh kumar sharma gupta iyer reddy nair johansson andersson nilsson larsson
dubois lefebvre laurent rossi russo ferrari bianchi ivanov petrov smirnov kowalski nowak
muller schneider fischer weber becker brennan oconnor fitzgerald gallagher novak horvath
"""
FIRST_NAMES: frozenset[str] = frozenset(_FIRST.split())
SURNAMES: frozenset[str] = frozenset(_LAST.split())

# --- therapies -------------------------------------------------------------------------------
#: generic (the normalised value) -> regex alternatives (brands, abbreviations).
THERAPIES: dict[str, tuple[str, ...]] = {
    "carboplatin": ("carboplatin", "carbo", "paraplatin"),
    # "cis" alone is an ordinary prefix/word; only the regimen shorthand "cis/etop" counts
    "cisplatin": ("cisplatin", "platinol", r"cis(?=\s*/)", r"(?<=/)cis"),
    "pemetrexed": ("pemetrexed", "alimta", "pemfexy", "pem"),
    "paclitaxel": ("paclitaxel", "taxol"),
    "nab-paclitaxel": (r"nab[\s-]?paclitaxel", "abraxane"),
    "docetaxel": ("docetaxel", "taxotere"),
    "gemcitabine": ("gemcitabine", "gemzar"),
    "etoposide": ("etoposide", "etop", r"vp-?16", "toposar", "vepesid"),
    "vinorelbine": ("vinorelbine", "navelbine"),
    "irinotecan": ("irinotecan", "camptosar"),
    "topotecan": ("topotecan", "hycamtin"),
    "lurbinectedin": ("lurbinectedin", "zepzelca"),
    "pembrolizumab": ("pembrolizumab", "keytruda", "pembro"),
    "nivolumab": ("nivolumab", "opdivo", "nivo"),
    "atezolizumab": ("atezolizumab", "tecentriq", "atezo"),
    "durvalumab": ("durvalumab", "imfinzi", "durva"),
    "ipilimumab": ("ipilimumab", "yervoy", "ipi"),
    "tremelimumab": ("tremelimumab", "imjudo"),
    "cemiplimab": ("cemiplimab", "libtayo"),
    "osimertinib": ("osimertinib", "tagrisso", "osi"),
    "erlotinib": ("erlotinib", "tarceva"),
    "gefitinib": ("gefitinib", "iressa"),
    "afatinib": ("afatinib", "gilotrif"),
    "dacomitinib": ("dacomitinib", "vizimpro"),
    "amivantamab": ("amivantamab", "rybrevant"),
    "lazertinib": ("lazertinib", "lazcluze"),
    "sotorasib": ("sotorasib", "lumakras"),
    "adagrasib": ("adagrasib", "krazati"),
    "alectinib": ("alectinib", "alecensa"),
    "crizotinib": ("crizotinib", "xalkori"),
    "brigatinib": ("brigatinib", "alunbrig"),
    "lorlatinib": ("lorlatinib", "lorbrena"),
    "ceritinib": ("ceritinib", "zykadia"),
    "entrectinib": ("entrectinib", "rozlytrek"),
    "repotrectinib": ("repotrectinib", "augtyro"),
    "larotrectinib": ("larotrectinib", "vitrakvi"),
    "capmatinib": ("capmatinib", "tabrecta"),
    "tepotinib": ("tepotinib", "tepmetko"),
    "selpercatinib": ("selpercatinib", "retevmo"),
    "pralsetinib": ("pralsetinib", "gavreto"),
    "dabrafenib": ("dabrafenib", "tafinlar"),
    "trametinib": ("trametinib", "mekinist"),
    "bevacizumab": ("bevacizumab", "avastin"),
    "ramucirumab": ("ramucirumab", "cyramza"),
    "trastuzumab deruxtecan": (r"(?:fam-)?trastuzumab\s+deruxtecan", "enhertu", "t-dxd"),
    "tarlatamab": ("tarlatamab", "imdelltra"),
    # radiation modalities share the concept; the longest match wins, so "chemoradiation"
    # is not also "radiation"
    "radiation": (
        r"radiation(?:\s+therapy)?(?!\s+(?:oncolog\w*|pneumonitis|esophagitis|dermatitis|"
        r"fibrosis|exposure|safety|field))",
        "radiotherapy",
        "xrt",
        "ebrt",
        "imrt",
        r"(?-i:RT)",
    ),
    "sbrt": (
        "sbrt",
        "sabr",
        r"stereotactic\s+(?:body|ablative)\s+(?:radiation|radiotherapy)(?:\s+therapy)?",
    ),
    "chemoradiation": (
        "chemoradiation",
        "chemoradiotherapy",
        r"chemo-?\s?(?:rt|xrt|radiation|radiotherapy)",
        r"(?-i:CRT)",
        r"chemo(?:therapy)?\s+(?:and|with|\+|/)\s+radiation(?:\s+therapy)?",
    ),
    "srs": ("srs", r"stereotactic\s+radiosurgery", r"gamma\s+knife"),
    "wbrt": ("wbrt", r"whole[\s-]brain\s+(?:radiation|radiotherapy|rt)(?:\s+therapy)?"),
}

# --- histology -------------------------------------------------------------------------------
HISTOLOGY: dict[str, tuple[str, ...]] = {
    "non-small cell carcinoma": (
        r"non[\s-]?small[\s-]?cell(?:\s+(?:lung\s+)?(?:carcinoma|cancer|ca))?(?:,?\s+NOS)?",
        r"nsclcs?",
    ),
    "small cell carcinoma": (
        r"(?<![\w-])(?<!non\s)small[\s-]cell\s+(?:lung\s+)?(?:carcinoma|cancer|ca|component|"
        r"features|histology|morphology|transformation)",
        r"transformation\s+to\s+small[\s-]cell(?:\s+(?:lung\s+)?(?:carcinoma|cancer|ca))?",
        r"sclcs?",
    ),
    "squamous cell carcinoma": (
        r"(?<!adeno)squamous[\s-]cell\s+(?:lung\s+)?(?:carcinoma|cancer|ca)",
        # "squamous NSCLC": the word is the subtype, NSCLC stays its own mention
        r"(?<!non-)(?<!non)squamous(?=\s+(?:nsclc|non[\s-]?small))",
        r"(?<=nsclc, )squamous",
        r"(?<=nsclc \()squamous",
        r"scc",
        r"sq\.?\s*cell\s+ca(?:rcinoma)?",
    ),
    "adenocarcinoma": (r"adeno-?carcinomas?", r"adeno-?ca"),
    "adenosquamous carcinoma": (r"adenosquamous\s+(?:cell\s+)?(?:carcinoma|ca)",),
    "large cell neuroendocrine carcinoma": (
        r"large[\s-]cell\s+neuroendocrine\s+(?:carcinoma|ca|tumou?r)",
        r"lcnec",
    ),
    "large cell carcinoma": (
        r"large[\s-]cell\s+(?:undifferentiated\s+)?(?:lung\s+)?(?:carcinoma|cancer|ca)",
    ),
    "mesothelioma": (r"mesotheliomas?", r"(?-i:MPM)"),
    "carcinoid": (r"(?:typical\s+|atypical\s+)?carcinoid(?:\s+tumou?rs?)?",),
    "sarcomatoid carcinoma": (r"sarcomatoid\s+carcinoma",),
}

# --- metastasis ------------------------------------------------------------------------------
#: canonical site -> regex; "any" holds the qualifiers that name no site ("distant mets").
SITES: dict[str, str] = {
    "brain": r"brain|cerebral|cerebellar|intracranial|(?-i:CNS)",
    "liver": r"liver|hepatic",
    "bone": r"bones?|bony|osseous|skeletal|spinal|spine|vertebral|osteoblastic|osteolytic",
    "adrenal": r"(?:(?:bilateral|left|right|(?-i:[LR]))\s+)?adrenals?(?:\s+glands?)?",
    "pleura": r"pleura|pleural",
    "lymph node": (
        r"(?:(?:mediastinal|hilar|supraclavicular|cervical|axillary|regional)\s+)?"
        r"(?:lymph\s+nodes?|lymph\s+nodal|nodal|nodes?|(?-i:LNs?))"
    ),
    "lung": r"(?:contralateral\s+)?(?:lungs?|pulmonary)",
    "peritoneum": r"peritoneal|peritoneum",
    "leptomeninges": r"leptomeningeal|leptomeninges",
    "pericardium": r"pericardial|pericardium",
    "any": r"distant|widespread|diffuse|disseminated|extensive",
}
_SITE_ALT = "|".join(f"(?:{p})" for p in SITES.values())
_SITE_SEP = r"(?:,\s*and|,\s*or|,|/|&|\+|\band\b|\bor\b)"
_SITE_LIST = rf"(?:{_SITE_ALT})(?:\s*{_SITE_SEP}\s*(?:{_SITE_ALT}))*"
_MET_NOUN = (
    r"(?:metastas[ie]s|metastatic\s+(?:disease|lesions?|deposits?|foci|focus|involvement|spread|"
    r"implants?|nodes?)|mets?|deposits|metastatic\s+(?:carcinoma|adenocarcinoma))"
)
_SITE_RES = {site: re.compile(rf"\b(?:{p})\b", re.IGNORECASE) for site, p in SITES.items()}

# --- biomarkers ------------------------------------------------------------------------------
_GENE = (
    r"egfr|kras|nras|hras|alk(?!\s*phos)|ros-?1|braf|(?-i:MET)|(?-i:RET)|her-?2|erbb-?2|tp53|"
    r"(?-i:p53)|stk11|keap1|pik3ca|ntrk[1-3]?|cdkn2a|smarca4|bap1|pten|rb1|nf1"
)
_GENE_RE = re.compile(rf"\b(?:{_GENE})\b", re.IGNORECASE)
FUSION_GENES = frozenset({"ALK", "ROS1", "RET", "NTRK"})
_AA = r"(?:p\.)?(?-i:[A-Z]\d{1,4}(?:[A-Z]|\*|fs|del|dup|ins))(?![\w*])"
_AA_RE = re.compile(_AA)
_NEG_STATUS = (
    r"wild[\s-]?type|(?-i:WT|wt)|neg(?:ative)?|not\s+(?:detected|identified|present|found)|"
    r"undetected|absent|-(?=\s|$|[,;.)])"
)
_POS_STATUS = (
    r"pos(?:itive)?|\+|mutated|mutant|mutations?|detected|rearranged|amplified|altered|present"
)
_STATUS = rf"(?:{_NEG_STATUS}|{_POS_STATUS})"
_NEG_STATUS_RE = re.compile(rf"(?:{_NEG_STATUS})\s*\W*$", re.IGNORECASE)
_FUSION_PARTNER = r"eml4|kif5b|cd74|ccdc6|ncoa4|slc34a2|ezr|tpm3|etv6|sdc4|trim24|lmna"
#: bare protein changes that name their gene on their own in lung cancer notes
KNOWN_VARIANTS: dict[str, str] = {
    "T790M": "EGFR",
    "L858R": "EGFR",
    "C797S": "EGFR",
    "L861Q": "EGFR",
    "S768I": "EGFR",
    "G719A": "EGFR",
    "G719S": "EGFR",
    "G719C": "EGFR",
    "G719X": "EGFR",
    "G12C": "KRAS",
    "G12D": "KRAS",
    "G12V": "KRAS",
    "G12R": "KRAS",
    "G12A": "KRAS",
    "G12S": "KRAS",
    "G13C": "KRAS",
    "G13D": "KRAS",
    "Q61H": "KRAS",
    "Q61L": "KRAS",
    "Q61K": "KRAS",
    "Q61R": "KRAS",
    "V600E": "BRAF",
}
_EXON_GENE_DEFAULT = {"18": "EGFR", "19": "EGFR", "20": "EGFR", "21": "EGFR", "14": "MET"}

# --- smoking, staging, performance status ------------------------------------------------------
_PY_UNIT = r"(?:pack[\s-]*(?:years?|yrs?)|pk[\s-]*(?:years?|yrs?)|(?-i:PYH?|pyh?))"
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_ROMAN = {
    "1": "I",
    "2": "II",
    "3": "III",
    "4": "IV",
    "one": "I",
    "two": "II",
    "three": "III",
    "four": "IV",
}
_STAGE_GROUP_RE = re.compile(
    r"stag(?:e|ed)(?:\s+as)?\s*[:=]?\s*(?P<g>iv|i{1,3}|[1-4]|one|two|three|four)"
    r"(?P<sub>[abc][1-3]?)?\b",
    re.IGNORECASE,
)
_ECOG_VALUE_RE = re.compile(r"\b(?P<n>[0-4])(?:\s*(?:-|–|to|/)\s*(?P<m>[0-4]))?\b")
_TNM_RE = re.compile(r"^(?:y?[cpr]|yp|a)?T", re.IGNORECASE)


@dataclass(frozen=True)
class RuleSpec:
    """One target rule: a regex that finds a concept mention and how to normalise it.

    ``value`` is the normalised value when the rule fixes it (histology, therapy); otherwise
    :func:`normalise` parses the matched text according to ``kind``.
    """

    concept: str
    kind: str
    pattern: str
    value: str | None = None


@dataclass(frozen=True)
class Mention:
    """A normalised mention inside a matched span (offsets relative to the span text).

    ``negated`` is None when ConText decides; True/False when the matched text itself says so
    ("KRAS wild-type", "never smoker").
    """

    value: str | None
    numeric_value: float | None
    start: int
    end: int
    negated: bool | None = None


def _alt(patterns: tuple[str, ...] | list[str]) -> str:
    return r"\b(?:" + "|".join(patterns) + r")\b"


def concept_rule_specs() -> list[RuleSpec]:
    """Return every target rule of the extraction pipeline."""
    specs: list[RuleSpec] = []
    for value, patterns in HISTOLOGY.items():
        specs.append(RuleSpec("histology", "fixed", _alt(patterns), value))
    for value, patterns in THERAPIES.items():
        specs.append(RuleSpec("therapy", "fixed", _alt(patterns), value))
    specs += [
        RuleSpec(
            "stage",
            "group",
            r"\b(?:(?:clinical(?:ly)?|pathologic(?:al(?:ly)?)?|ajcc)\s+)?stag(?:e|ed)(?:\s+as)?"
            r"\s*[:=]?\s*(?:iv|i{1,3}|[1-4]|one|two|three|four)(?:[abc][1-3]?)?\b",
        ),
        RuleSpec(
            "stage",
            "tnm",
            # T, N and M in capitals; prefixes and sub-letters either case ("CT4 N2 M1A")
            r"(?-i:\b(?:[yY]?[cprCPR]|a)?T(?:[0-4][a-dA-D]?|is|IS|[xX])\s*(?:[yY]?[cprCPR])?"
            r"N(?:[0-3][a-cA-C]?|[xX])(?:\s*(?:[yY]?[cprCPR])?M(?:[01][a-dA-D]?|[xX]))?\b)",
        ),
        RuleSpec(
            "ecog",
            "ecog",
            r"\b(?:ecog|zubrod)(?:[\s-]*(?:ps|performance\s+status|performance|status|score|"
            r"grade))*(?:\s*\((?:ps|ecog)\))?\s*(?:(?:of|is|was|at|now)\s*)?[:=\-]?\s*"
            r"[0-4](?:\s*(?:-|–|to|/)\s*[0-4])?\b(?!\s*%)",
        ),
        RuleSpec(
            "ecog",
            "ecog",
            r"\b(?:performance\s+status|(?-i:PS))(?:\s*\((?:ecog|ps|who)\))?\s*"
            r"(?:(?:of|is|was|at|now)\s*)?[:=\-]?\s*(?:ecog\s*)?[0-4](?:\s*(?:-|–|to|/)\s*[0-4])?"
            r"\b(?!\s*%)",
        ),
        # biomarkers, most specific first (the matcher keeps the longest overlapping match)
        RuleSpec(
            "biomarker",
            "specific",
            rf"\b(?:{_GENE})(?:[\s:-]+(?:gene\s+)?(?:mutation|mutant|mut|variant|alteration)s?)?"
            rf"[\s:,(-]*(?:exon\s*\d+\s*)?{_AA}(?:\s*(?:mutation|mutant|mutated|variant))?"
            rf"(?:\s*(?:{_STATUS}))?",
        ),
        RuleSpec(
            "biomarker",
            "exon",
            rf"\b(?:(?:{_GENE})[\s:-]*)?(?:exon|ex)\s*\d{{1,2}}\s*(?:(?:in-frame\s+)?"
            r"del(?:etion)?s?|ins(?:ertion)?s?|skip(?:ping)?(?:\s+(?:mutation|alteration))?|"
            rf"mutations?|alterations?)\b(?:\s*(?:{_STATUS}))?",
        ),
        RuleSpec(
            "biomarker",
            "exon",
            rf"\b(?:(?:{_GENE})[\s:-]*)?(?:ex(?:on)?(?:19del|20ins|14)|del\s*19|19\s*del|"
            rf"(?-i:MET)ex14)\b(?:\s*(?:{_STATUS}))?",
        ),
        RuleSpec(
            "biomarker",
            "fusion",
            rf"\b(?:(?:{_FUSION_PARTNER})[\s-]*)?(?:alk(?!\s*phos)|ros-?1|(?-i:RET)|ntrk[1-3]?)"
            r"[\s-]*(?:gene\s+)?(?:fusions?|rearrangements?|rearranged|translocations?|"
            rf"translocated|positive|pos|\+)(?:\s*(?:{_STATUS}))?",
        ),
        RuleSpec(
            "biomarker",
            "fusion",
            rf"\b(?:{_FUSION_PARTNER})-(?:alk|ros1|(?-i:RET)|ntrk[1-3]?)\b",
        ),
        RuleSpec(
            "biomarker",
            "copy",
            rf"\b(?:{_GENE})[\s-]*(?:gene\s+)?(?:amplification|amplified|amp|copy\s+number\s+gain|"
            rf"loss|deletion|deleted|inactivation|overexpression)\b(?:\s*(?:{_STATUS}))?",
        ),
        RuleSpec("biomarker", "copy", rf"\bloss\s+of\s+(?:{_GENE})\b"),
        RuleSpec(
            "biomarker",
            "variant",
            r"\b(?-i:" + "|".join(KNOWN_VARIANTS) + r")\b(?:\s*(?:mutation|mutant|mutated))?"
            rf"(?:\s*(?:{_STATUS}))?",
        ),
        RuleSpec(
            "biomarker",
            "gene_status",
            rf"\b(?:{_GENE})(?:\s*(?:/|,|&|\band\b|\bor\b)\s*(?:{_GENE}))*(?:[\s:-]*(?:gene|"
            r"mutational|testing|test|status|result|ihc|fish|ngs|pcr|by\s+(?:ihc|fish|ngs|pcr)))*"
            rf"[\s:-]*(?:{_STATUS})",
        ),
        RuleSpec(
            "biomarker",
            "gene_status",
            rf"(?:(?<=negative for )|(?<=neg for )|(?<=negative for: )|(?<=no )|(?<=without ))"
            rf"(?:{_GENE})(?:\s*(?:/|,|&|\band\b|\bor\b|\bnor\b)\s*(?:{_GENE}))*\b",
        ),
        RuleSpec(
            "biomarker",
            "pdl1",
            r"\bpd-?l-?1\b[^.;\n%]{0,60}?(?:<|>|≥|less\s+than|greater\s+than|under|below)?\s*"
            r"\d{1,3}(?:\.\d+)?\s*%",
        ),
        RuleSpec(
            "biomarker",
            "pdl1",
            r"\bpd-?l-?1\b(?:\s*\(?(?:22c3|sp263|sp142|28-8|ihc|tps|cps|expression|status)\)?)*"
            r"[\s:-]*(?:neg(?:ative)?|pos(?:itive)?|high|low)\b",
        ),
        # smoking
        RuleSpec(
            "smoking",
            "never",
            r"\b(?:never[\s-]*(?:a\s+)?smok(?:ers?|ed|ing)|life-?long\s+non-?\s?smoker|"
            r"non-?\s?smoker|never\s+(?:used\s+)?(?:tobacco|cigarettes)|(?:denies|denied|no|"
            r"negative\s+for)\s+(?:any\s+)?(?:(?:history|hx)\s+of\s+|h/o\s+)?(?:tobacco|smoking|"
            r"cigarettes?|tob)(?:\s+(?:use|history|hx|abuse))?|(?:smoking|tobacco)(?:\s+(?:status|"
            r"use|history|hx))?\s*[:=-]\s*(?:never|none|denies|no|negative))\b",
        ),
        RuleSpec(
            "smoking",
            "former",
            r"\b(?:(?:former|ex-?|past|prior|previous|remote|reformed)[\s-]*(?:light\s+|heavy\s+|"
            r"\d+\s*ppd\s+)?(?:cigarette\s+)?smokers?|quit\s+(?:smoking|tobacco|cigarettes)|"
            r"stopped\s+smoking|(?:previously|formerly)\s+smoked|(?:smoking|tobacco)(?:\s+(?:status"
            r"|use|history|hx))?\s*[:=-]\s*(?:former|ex|quit|past|remote)|quit\s+(?:in\s+)?"
            r"(?:19|20)\d\d|quit\s+\d+\s*(?:years?|yrs?|y)\s+ago|(?:tobacco|smok\w*|cigarettes?)"
            r"\b[^.\n;]{0,40}?\bquit)\b",
        ),
        RuleSpec(
            "smoking",
            "current",
            r"\b(?:(?:current(?:ly)?|active(?:ly)?|still|heavy|daily|every\s*day|chronic)\s+"
            r"(?:(?:\d+(?:/\d+)?|one|half\s+a|a)\s*(?:ppd|packs?\s+(?:per|a)\s+day)\s+)?"
            r"(?:cigarette\s+)?smok(?:ers?|es|ing)|continues\s+to\s+smoke|(?:smoking|tobacco)"
            r"(?:\s+(?:status|use|history|hx))?\s*[:=-]\s*(?:current|active|yes|daily|every\s*day)"
            r"|current\s+(?:tobacco|cigarette)\s+use|smokes)\b",
        ),
        RuleSpec("smoking", "bare", r"\bsmokers?\b"),
        # "45 pack-yr, quit at diagnosis": one mention, so the quit does not cut the number off
        RuleSpec(
            "smoking",
            "pack_years_quit",
            rf"\b\d{{1,3}}(?:\.\d+)?\s*[-+]?\s*{_PY_UNIT}\b[^.\n;]{{0,40}}?\bquit\b",
        ),
        RuleSpec(
            "smoking",
            "pack_years",
            rf"\b\d{{1,3}}(?:\.\d+)?\s*[-+]?\s*{_PY_UNIT}\b|\b{_PY_UNIT}\s*[:=]\s*\d{{1,3}}\b",
        ),
        # metastasis
        RuleSpec("metastasis", "sites", rf"\b{_SITE_LIST}\s+{_MET_NOUN}\b"),
        RuleSpec(
            "metastasis",
            "sites",
            r"\b(?:metasta(?:tic|sis|ses|sized|sised)|mets?|spread)\s+(?:to|in|into|involving|"
            rf"within)\s+(?:the\s+|both\s+)?(?:{_SITE_ALT})(?:\s*{_SITE_SEP}\s*(?:the\s+)?"
            rf"(?:{_SITE_ALT}))*\b",
        ),
        RuleSpec(
            "metastasis",
            "sites",
            r"\bmetastatic\s+(?:\w+\s+){0,2}?(?:carcinoma|adenocarcinoma|disease|tumou?r|nsclc|"
            r"sclc|cancer)\s+(?:in|to|involving|within)\s+(?:the\s+)?(?:\d+\s*(?:/|of)\s*\d+\s+)?"
            rf"(?:{_SITE_ALT})\b",
        ),
        RuleSpec(
            "metastasis",
            "sites",
            r"\bmalignant\s+(?:pleural|pericardial|peritoneal)\s+(?:effusions?|ascites|disease|"
            r"fluid)\b|\bmalignant\s+ascites\b",
        ),
        RuleSpec(
            "metastasis",
            "brain_imaging_negative",
            r"\b(?:brain\s+(?:mri|ct|imaging|scan)|(?:mri|ct|imaging)\s+(?:of\s+)?(?:the\s+)?"
            r"(?:brain|head))(?:\s+(?:was|is|were|today|again))?\s*[:,-]?\s*(?:neg(?:ative)?\s+for|"
            r"without|w/o|no(?:\s+evidence\s+of)?|shows\s+no|showed\s+no|with\s+no)\s+"
            r"(?:new\s+|any\s+)?(?:intracranial\s+|brain\s+)?(?:metastas[ie]s|mets|metastatic\s+"
            r"disease)\b",
        ),
        RuleSpec(
            "metastasis",
            "sites",
            r"\b(?:(?:distant|widespread|diffuse|disseminated|extensive)\s+)?(?:metastatic\s+"
            r"(?:disease|spread|lesions?|deposits?|foci)|metastases|metastasis|mets|distant\s+"
            r"disease)\b",
        ),
    ]
    return specs


# --- sections ---------------------------------------------------------------------------------
SECTIONS: dict[str, tuple[str, ...]] = {
    "chief_complaint": (
        "chief complaint",
        "cc",
        r"reason for (?:visit|consult(?:ation)?|referral)",
    ),
    "history": (
        "history of present illness",
        "hpi",
        "history",
        r"interval (?:history|hx)",
        r"onc(?:ologic|ology)? (?:history|hx)",
        "clinical history",
        "subjective",
    ),
    "past_medical_history": ("past medical history", "pmh", "pmhx", "medical history"),
    "past_surgical_history": ("past surgical history", "psh"),
    "treatment_history": (r"treatment(?: history)?", "tx hx", r"prior (?:therapy|treatment)"),
    "assessment_plan": (
        r"assessment\s*(?:and|&|/)\s*plan",
        "a/p",
        "a&p",
        "assessment",
        "plan",
        r"impression\s*(?:and|&|/)\s*plan",
        r"(?:board )?recommendations?",
    ),
    "impression": ("impression", "imp"),
    "diagnosis": ("final diagnosis", "diagnosis", "diagnoses", "dx"),
    "pathology": ("surgical pathology", "pathology", "path", "path/molecular"),
    "molecular": (r"molecular(?: testing| profiling)?", r"biomarkers?", "genomics", "ngs"),
    "imaging": ("imaging", "radiology", "findings", "comparison"),
    "medications": (r"(?:current |home |outpatient )?medications", "meds"),
    "family_history": ("family history", "fhx", "fh", "fam hx", "family hx"),
    "social_history": ("social history", "shx", "sh", "social"),
    "review_of_systems": ("review of systems", "ros"),
    "allergies": ("allergies",),
}


def section_patterns() -> dict[str, str]:
    """Return canonical section name -> header regex (a header starts a line, ends with ':')."""
    return {
        name: r"(?im)^[ \t]*(?:[#*•\-]+[ \t]*|\d+[.)][ \t]*)?(?:"
        + "|".join(alts)
        + r")[ \t]*(?::|$)"
        for name, alts in SECTIONS.items()
    }


# --- ConText additions ------------------------------------------------------------------------
RELATIVES = (
    "mother mom father dad sister brother sibling siblings aunt uncle grandmother grandfather "
    "cousin daughter son niece nephew"
).split()

#: Types a family cue may modify: what relatives' history is recorded for. Therapies, stage and
#: ECOG are the patient's even in "discussed with son: carboplatin/etoposide".
FAMILY_TYPES = frozenset({"HISTOLOGY", "SMOKING", "BIOMARKER", "METASTASIS"})


def context_rule_dicts() -> list[dict[str, Any]]:
    """Return ConText rules added to medspaCy's defaults (as ``ConTextRule`` keyword dicts)."""
    neg, poss, hist, hyp, fam = (
        "NEGATED_EXISTENCE",
        "POSSIBLE_EXISTENCE",
        "HISTORICAL",
        "HYPOTHETICAL",
        "FAMILY",
    )
    return [
        {
            "literal": "no e/o",
            "category": neg,
            "direction": "FORWARD",
            "pattern": [{"LOWER": "no"}, {"LOWER": {"IN": ["e/o", "eo"]}}],
        },
        {"literal": "w/o", "category": neg, "direction": "FORWARD"},
        {"literal": "nor", "category": neg, "direction": "FORWARD"},
        {
            "literal": "not detected",
            "category": neg,
            "direction": "BACKWARD",
            "pattern": [
                {"LOWER": "not"},
                {"LOWER": {"IN": ["detected", "identified", "seen", "present", "found"]}},
            ],
        },
        {
            "literal": "were negative",
            "category": neg,
            "direction": "BACKWARD",
            "pattern": [{"LOWER": {"IN": ["were", "is", "are"]}}, {"LOWER": "negative"}],
        },
        {
            "literal": "loss of",
            "category": neg,
            "direction": "FORWARD",
            "allowed_types": {"BIOMARKER"},
        },
        {
            "literal": "concerning for",
            "category": poss,
            "direction": "FORWARD",
            "pattern": [{"LOWER": {"IN": ["concerning", "concern"]}}, {"LOWER": "for"}],
        },
        {
            "literal": "suspected",
            "category": poss,
            "direction": "FORWARD",
            "pattern": [
                {
                    "LOWER": {
                        "IN": [
                            "suspected",
                            "suspect",
                            "presumed",
                            "probable",
                            "questionable",
                            "favor",
                            "favored",
                            "?",
                        ]
                    }
                }
            ],
        },
        {
            "literal": "cannot exclude",
            "category": poss,
            "direction": "FORWARD",
            "pattern": [
                {"LOWER": {"IN": ["cannot", "can't"]}},
                {"LOWER": {"IN": ["exclude", "excluded"]}},
            ],
        },
        {
            "literal": "s/p",
            "category": hist,
            "direction": "FORWARD",
            "pattern": [{"LOWER": {"IN": ["s/p", "sp"]}}],
        },
        {"literal": "status post", "category": hist, "direction": "FORWARD"},
        {
            "literal": "previously",
            "category": hist,
            "direction": "FORWARD",
            "pattern": [
                {
                    "LOWER": {
                        "IN": ["previously", "prior", "formerly", "remote", "received", "completed"]
                    }
                }
            ],
        },
        {"literal": "was treated with", "category": hist, "direction": "FORWARD"},
        {
            "literal": "consider",
            "category": hyp,
            "direction": "FORWARD",
            "pattern": [
                {
                    "LOWER": {
                        "IN": [
                            "consider",
                            "considering",
                            "would",
                            "could",
                            "option",
                            "options",
                            "candidate",
                        ]
                    }
                }
            ],
        },
        {"literal": "in case of", "category": hyp, "direction": "FORWARD"},
        {
            "literal": "upon progression",
            "category": hyp,
            "direction": "FORWARD",
            "pattern": [{"LOWER": {"IN": ["upon", "at", "on"]}}, {"LOWER": "progression"}],
        },
        {
            "literal": "fhx",
            "category": fam,
            "direction": "FORWARD",
            "allowed_types": set(FAMILY_TYPES),
            "pattern": [{"LOWER": {"IN": ["fhx", "famhx"]}}],
        },
        {
            "literal": "in her mother",
            "category": fam,
            "direction": "BACKWARD",
            "allowed_types": set(FAMILY_TYPES),
            "pattern": [
                {"LOWER": {"IN": ["in", "of"]}},
                {"LOWER": {"IN": ["his", "her", "their", "the", "patient's", "pt's"]}, "OP": "?"},
                {"LOWER": {"IN": ["maternal", "paternal", "late"]}, "OP": "?"},
                {"LOWER": {"IN": RELATIVES}},
            ],
        },
    ]


# --- normalisers ------------------------------------------------------------------------------


def is_tnm(value: str) -> bool:
    """Return True when a ``stage`` value is a TNM string rather than an AJCC group."""
    return bool(_TNM_RE.match(value))


_TNM_PART_RE = re.compile(
    r"(?P<pre>[a-z]*)(?P<cat>[TNM])(?P<num>is|[0-4x])(?P<sub>[a-d]?)", re.IGNORECASE
)


def canonical_tnm(raw: str) -> str:
    """Return a TNM string without whitespace, in AJCC case: ``CT4 N2 M1A`` -> ``cT4N2M1a``."""
    return "".join(
        m["pre"].lower()
        + m["cat"].upper()
        + (m["num"].lower() if m["num"].lower() == "is" else m["num"].upper())
        + m["sub"].lower()
        for m in _TNM_PART_RE.finditer(re.sub(r"\s+", "", raw))
    )


def _gene_name(raw: str) -> str:
    gene = raw.upper().replace("-", "")
    if gene in ("ERBB2", "HER2"):
        return "HER2"
    if gene == "P53":
        return "TP53"
    if gene.startswith("NTRK"):
        return "NTRK"
    return gene


def _gene_level_value(gene: str) -> str:
    return f"{gene} fusion" if gene in FUSION_GENES else f"{gene} mutation"


def _negative_tail(text: str) -> bool:
    return bool(_NEG_STATUS_RE.search(text))


def _number(text: str) -> float:
    return float(_NUMBER_RE.findall(text)[-1])


def _biomarker(kind: str, text: str) -> list[Mention]:
    n = len(text)
    neg = True if _negative_tail(text) else None
    if kind == "pdl1":
        if re.search(r"%", text):
            number = re.search(
                r"(?P<lt><|less\s+than|under|below)?\s*(?P<n>\d{1,3}(?:\.\d+)?)"
                r"\s*%",
                text,
                re.IGNORECASE,
            )
            assert number is not None
            value = float(number["n"])
            if number["lt"] and value <= 1:
                value = 0.0  # "<1 %" is reported as negative; 0 keeps the cut-offs right
            return [Mention("PD-L1", value, 0, n)]
        return [Mention("PD-L1", None, 0, n, True if neg else None)]
    if kind == "variant":
        aa = _AA_RE.search(text)
        assert aa is not None
        return [Mention(f"{KNOWN_VARIANTS[aa.group()]} {aa.group()}", None, 0, n, neg)]
    if kind == "gene_status":
        mentions = []
        for m in _GENE_RE.finditer(text):
            gene = _gene_name(m.group())
            mentions.append(Mention(_gene_level_value(gene), None, m.start(), m.end(), neg))
        return mentions
    genes = [_gene_name(m.group()) for m in _GENE_RE.finditer(text)]
    if kind == "specific":
        aa = _AA_RE.search(text)
        assert aa is not None and genes
        return [Mention(f"{genes[0]} {aa.group().removeprefix('p.')}", None, 0, n, neg)]
    if kind == "exon":
        found = re.search(r"(?:ex(?:on)?\s*(\d{1,2})|del\s*(19))", text, re.IGNORECASE)
        exon = next(g for g in found.groups() if g) if found else "19"
        gene = genes[0] if genes else _EXON_GENE_DEFAULT.get(exon, "EGFR")
        lower = text.lower()
        if "skip" in lower or (exon == "14" and gene == "MET"):
            alteration = "skipping"
        elif "ins" in lower:
            alteration = "insertion"
        elif "del" in lower:
            alteration = "deletion"
        else:
            alteration = "mutation"
        return [Mention(f"{gene} exon {exon} {alteration}", None, 0, n, neg)]
    if kind == "fusion":
        fusion = [g for g in genes if g in FUSION_GENES]
        gene = fusion[-1] if fusion else "ALK"
        return [Mention(f"{gene} fusion", None, 0, n, neg)]
    if kind == "copy":
        lower = text.lower()
        if re.search(r"amp|gain", lower):
            alteration = "amplification"
        elif "overexpression" in lower:
            alteration = "overexpression"
        else:
            alteration = "loss"
        return [Mention(f"{genes[0]} {alteration}", None, 0, n, neg)]
    raise ValueError(f"unknown biomarker rule kind {kind!r}")


def _metastasis(kind: str, text: str) -> list[Mention]:
    if kind == "brain_imaging_negative":
        return [Mention("brain", None, 0, len(text), True)]
    found: list[tuple[int, int, str]] = []
    for site, regex in _SITE_RES.items():
        for m in regex.finditer(text):
            if not any(s <= m.start() < e for s, e, _ in found):
                found.append((m.start(), m.end(), site))
    if not found and re.search(r"ascites", text, re.IGNORECASE):
        found.append((0, len(text), "peritoneum"))
    if not found:
        return [Mention("any", None, 0, len(text))]
    if len(found) == 1:
        # one site: the mention is the whole phrase ("osseous metastases")
        return [Mention(found[0][2], None, 0, len(text))]
    mentions, seen = [], set()
    for start, end, site in sorted(found):
        if site not in seen:
            seen.add(site)
            mentions.append(Mention(site, None, start, end))
    return mentions


def normalise(concept: str, kind: str, text: str, value: str | None = None) -> list[Mention]:
    """Return the normalised mentions in the text matched by one rule.

    A list because one match can name several facts ("EGFR/ALK/ROS1 negative", "brain and
    liver metastases"); each mention keeps its own offsets inside ``text``.

    Raises:
        ValueError: an unknown rule kind (a programming error, never an input problem).
    """
    n = len(text)
    if kind == "fixed":
        return [Mention(value, None, 0, n)]
    if concept == "stage":
        if kind == "tnm":
            return [Mention(canonical_tnm(text), None, 0, n)]
        m = _STAGE_GROUP_RE.search(text)
        assert m is not None
        group = m["g"].lower()
        roman = _ROMAN.get(group, group.upper())
        return [Mention(roman + (m["sub"] or "").upper(), None, 0, n)]
    if concept == "ecog":
        *_, m = _ECOG_VALUE_RE.finditer(text)  # the grade follows the label
        grade = max(int(m["n"]), int(m["m"] or 0))  # a range counts as its worse grade
        return [Mention(str(grade), float(grade), 0, n)]
    if concept == "biomarker":
        return _biomarker(kind, text)
    if concept == "smoking":
        if kind == "pack_years":
            return [Mention(None, _number(text), 0, n)]
        if kind == "pack_years_quit":
            return [Mention("former", float(_NUMBER_RE.findall(text)[0]), 0, n)]
        if kind == "never":
            # the negation is the value itself: "denies tobacco" is a never smoker, not negated
            return [Mention("never", None, 0, n, False)]
        return [Mention("current" if kind == "bare" else kind, None, 0, n)]
    if concept == "metastasis":
        return _metastasis(kind, text)
    raise ValueError(f"unknown concept {concept!r}")


# --- words the scrubber must leave alone ------------------------------------------------------


def _clinical_words() -> frozenset[str]:
    words: set[str] = set()
    for generic, aliases in THERAPIES.items():
        words.update(generic.split())
        words.update(a for a in aliases if a.isalpha())
    for canonical in HISTOLOGY:
        words.update(canonical.replace("-", " ").split())
    words.update(site for site in SITES if " " not in site)
    words.update(
        """egfr kras nras alk ros braf met ret her erbb tp stk keap pik ntrk ecog stage nsclc sclc
        tumor tumour lung lobe node nodes pleura pleural adrenal liver bone bones brain carcinoma
        cancer mass lesion biopsy pathology imaging history plan assessment impression family
        social medications oncology thoracic clinic hospital medical center mother father sister
        brother son daughter wife husband aunt uncle patient pt doctor nurse january february
        march april may june july august september october november december monday tuesday
        wednesday thursday friday saturday sunday the and with without for from this that there
        they she he his her note report final diagnosis comment procedure exam findings
        radiation chemo chemotherapy immunotherapy pembrolizumab street avenue road drive lane
        right left upper lower mrn dob md do rn np phd exon exons intron
        na ca mg cl hco bun""".split()
    )
    return frozenset(words)


#: Lower-case words never treated as a name, even when capitalised next to one.
CLINICAL_WORDS: frozenset[str] = _clinical_words()

#: Lower-case particles of family names ("van der", "de la", "Ní", "Abu"): the scrubber joins
#: them to the name they stand in, and a particle alone is never a name.
NAME_PARTICLES: frozenset[str] = frozenset(
    "van der den de la las los le du des di da del della dos das do von zu ter ten bin ibn "
    "bint abu al el ould mac mc ní nic ó o y e".split()
)

#: Eponyms kept in notes on purpose: they name a disease, sign, test or procedure, not a person
#: the note is about ("Pancoast tumour", "Horner syndrome", "Whipple procedure"). Written with a
#: following clinical word, they are still kept; anywhere else a capitalised word that is outside
#: the vocabulary is scrubbed as a name.
EPONYMS: frozenset[str] = frozenset(
    """pancoast horner hodgkin hodgkins whipple gleason breslow clark karnofsky zubrod glasgow
    virchow trousseau cushing addison graves hashimoto crohn barrett kaposi ewing wilms burkitt
    merkel paget bence jones lambert eaton hürthle hurthle schwann wegener sjogren sjögren
    raynaud parkinson alzheimer huntington foley hickman swan ganz papanicolaou pap gram giemsa
    ziehl neelsen recist down bell""".split()
)
