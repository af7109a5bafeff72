"""`-m auto`: the registry model (or ensemble preset) to run for the stems asked.

The rule, in one place:

1. Candidates: every entry and preset that can give all the stems asked (names
   compared case-insensitively; `instrumental` also from a vocals model, as an
   ensemble derives it: `ensemble_bag.stem_plan`). No stems asked: the four
   stems drums, bass, other, vocals. Offline (or with HF_HUB_OFFLINE), only
   candidates whose files are all cached (or installed, as deepfilternet3's).
2. Score: the published per-stem SDRs (`sdr.stems`) of the stems asked. An
   entry covering more of the asked stems with a published score ranks above one
   covering fewer; at equal coverage, one scored on an earlier-named stem ranks
   first (so means are only compared over the same stems); then the mean of those
   scores. Scores come from different test sets (MUSDB18-HQ, MVSep Multisong);
   the line says which.
3. Cost: the download size (the sum of the members' for a preset), the one
   cost every entry states; model size tracks compute closely enough to order
   models by speed, which is all `fast` needs.
4. `--quality best`: the highest score; `balanced` (the default): the highest
   score among single models of at most `BALANCED_BYTES`; `fast`: the smallest
   download among the single models scored on the most stems. Ties go to the
   smaller download.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from .errors import UsageError

QUALITIES = ("fast", "balanced", "best")
DEFAULT_STEMS = ("drums", "bass", "other", "vocals")
#: `balanced` keeps to models no bigger than this (a RoFormer of ~200 MB runs near real time
#: on a laptop GPU; the 900 MB ones take several times longer).
BALANCED_BYTES = 400_000_000


@dataclass(frozen=True)
class Choice:
    """What `-m auto` picked: the entry or preset `name`, and why (`reason`, one line)."""

    name: str
    reason: str


@dataclass(frozen=True)
class _Candidate:
    name: str
    preset: bool
    covered: int                 # asked stems with a published score
    pattern: Tuple[bool, ...]    # which of them, in the order asked
    score: Optional[float]       # their mean SDR in dB
    dataset: Optional[str]
    size: Optional[int]          # download bytes (None: not stated)
    available: bool              # every file cached or installed


def check_quality(quality: str) -> str:
    if quality not in QUALITIES:
        raise UsageError(f"unknown --quality {quality!r}", hint="use one of " + ", ".join(QUALITIES))
    return quality


def _size(spec) -> Optional[int]:
    if spec.download_size:
        return spec.download_size
    sizes = [f.size for f in spec.files]
    return sum(sizes) if sizes and all(sizes) else None


def _available(spec) -> bool:
    from . import families, hub

    if hub.cache_state(spec) == "yes":
        return True
    bundled = getattr(families.get(spec.family, path=spec.source).module(), "bundled", None)
    return bundled is not None and bundled(spec) is not None


def _scored(sdr, stems: Sequence[str], wanted: Sequence[str]) -> Tuple[int, Tuple[bool, ...], Optional[float], Optional[str]]:
    per = {} if sdr is None else {k.lower(): v for k, v in sdr.stems.items()}
    if sdr is not None and not per and sdr.value is not None and len(stems) == 1:
        per = {stems[0].lower(): sdr.value}   # a one-stem model's score is its stem's
    pattern = tuple(s in per for s in wanted)
    values = [per[s] for s in wanted if s in per]
    if not values:
        return 0, pattern, None, None
    return len(values), pattern, sum(values) / len(values), sdr.dataset


def candidates(registry, wanted: Sequence[str], offline: bool) -> List[_Candidate]:
    from .ensemble_bag import stem_plan

    out = []
    for spec in registry:
        if all(stem_plan(spec.stems, s) is not None for s in wanted):
            covered, pattern, score, dataset = _scored(spec.sdr, spec.stems, wanted)
            out.append(_Candidate(spec.name, False, covered, pattern, score, dataset, _size(spec),
                                  _available(spec) if offline else True))
    for preset in registry.ensembles.values():
        if all(s in [x.lower() for x in preset.stems] for s in wanted):
            members = [registry.get(m) for m in preset.models]
            sizes = [_size(m) for m in members]
            covered, pattern, score, dataset = _scored(preset.sdr, preset.stems, wanted)
            out.append(_Candidate(preset.name, True, covered, pattern, score, dataset,
                                  sum(sizes) if all(sizes) else None,
                                  all(_available(m) for m in members) if offline else True))
    return out


def _rank(c: _Candidate) -> Tuple:
    """Higher is better: coverage, which stems, score, then a smaller download."""
    return (c.covered, c.pattern, c.score if c.score is not None else float("-inf"), -(c.size or float("inf")))


def choose(registry_files: Iterable = (), *, stems: Optional[Sequence[str]] = None, quality: str = "balanced",
           offline: bool = False) -> Choice:
    """The entry or preset for `stems` under `quality`, with the one-line reason."""
    from . import hub
    from .registry import load_registry

    check_quality(quality)
    offline = hub.is_offline(offline)
    wanted = [s.lower() for s in (stems or DEFAULT_STEMS)]
    found = [c for c in candidates(load_registry(registry_files), wanted, offline) if c.available]
    if not found:
        where = "cached " if offline else ""
        raise UsageError(f"-m auto: no {where}model gives {', '.join(wanted)}",
                         hint="`unmix models download NAME` while online, then run again" if offline
                         else "`unmix models list` shows what each model gives")
    scored = [c for c in found if c.covered]
    pool = scored or found
    singles = [c for c in pool if not c.preset] or pool
    if quality == "best":
        pick, why = max(pool, key=_rank), "the highest published score"
    elif quality == "balanced":
        small = [c for c in singles if c.size is not None and c.size <= BALANCED_BYTES]
        if small:
            pick, why = max(small, key=_rank), f"the highest published score up to {BALANCED_BYTES // 10**6} MB"
        else:
            pick, why = max(singles, key=_rank), "the highest published score"
    else:
        # Among the single models scored on the most stems, the smallest download.
        most = max(c.covered for c in singles)
        sized = [c for c in singles if c.covered == most and c.size is not None] or singles
        pick = min(sized, key=lambda c: (c.size or float("inf"), -(c.score or float("-inf"))))
        why = "the smallest download with a published score" if pick.covered else "the smallest download"
    score = (f"{pick.score:.2f} dB SDR on {pick.dataset} ({pick.covered} of {len(wanted)} stems published)"
             if pick.score is not None else "no published score")
    size = "size not stated" if pick.size is None else f"{pick.size / 1e6:.0f} MB download"
    kind = "ensemble preset " if pick.preset else ""
    reason = (f"-m auto picked {kind}{pick.name} for {', '.join(wanted)} (--quality {quality}: {why}): "
              f"{score}, {size}{', cached' if offline else ''}")
    return Choice(pick.name, reason)


__all__ = ["Choice", "QUALITIES", "choose", "check_quality", "candidates", "DEFAULT_STEMS", "BALANCED_BYTES"]
