"""Security-label changes on a server: one function computes the delta, applies it, verifies it.

Servers differ (HAPI merges labels on update, others replace them, some lack
``$meta-add``), so every change of labels goes through :func:`apply_labels`:

* labels are only added, unless a removal is asked for by name;
* the confidentiality code is only raised, unless lowering is asked for;
* a resource is never left without a confidentiality code;
* after the change the labels are read back, and anything other than what was
  intended raises :class:`LabelVerificationFailed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._codes import V3_CONFIDENTIALITY, V3_OBSERVATION_VALUE, Confidentiality
from .._exceptions import LabelError, LabelVerificationFailed
from . import ds4p
from .client import FhirClient

Coding = tuple[str, str]

#: The provenance (integrity) codes, by how far the assertion of the image's origin is trusted:
#: a clinician or device, the patient, a substitute decision maker, an acquaintance
_TRUST: dict[Coding, int] = {
    (V3_OBSERVATION_VALUE, "CLINAST"): 4,
    (V3_OBSERVATION_VALUE, "DEVAST"): 4,
    (V3_OBSERVATION_VALUE, "PATAST"): 3,
    (V3_OBSERVATION_VALUE, "SDMAST"): 2,
    (V3_OBSERVATION_VALUE, "PACQAST"): 1,
}


def _key(coding: dict[str, Any]) -> Coding:
    return (str(coding.get("system", "")), str(coding.get("code", "")))


def _codings(keys: Iterable[Coding]) -> list[dict[str, str]]:
    return [{"system": s, "code": c} for s, c in sorted(keys)]


def _conf_rank(key: Coding) -> int:
    try:
        return int(Confidentiality[key[1]])
    except KeyError:
        raise LabelError(f"unknown confidentiality code {key[1]!r}") from None


@dataclass(frozen=True)
class LabelDelta:
    add: frozenset[Coding]
    delete: frozenset[Coding]

    @property
    def empty(self) -> bool:
        return not self.add and not self.delete

    def result(self, current: Iterable[Coding]) -> set[Coding]:
        return (set(current) | self.add) - self.delete


def plan_label_change(
    current: Iterable[dict[str, Any]],
    desired: Iterable[dict[str, Any]],
    *,
    remove: Iterable[dict[str, Any]] = (),
    allow_lower: bool = False,
    keep_higher: bool = False,
) -> LabelDelta:
    """The labels to add and delete to reach ``desired`` without losing anything silently.

    ``desired`` labels are added. A desired confidentiality code replaces the
    current one only if it is higher (or ``allow_lower``); a lower one is an
    error, unless ``keep_higher``, which keeps the current code instead. Of two
    provenance (integrity) codes the less trusted is kept. Other current labels stay unless
    named in ``remove``.
    """
    cur = {_key(c) for c in current}
    want = {_key(c) for c in desired}
    drop = {_key(c) for c in remove}
    cur_conf = {k for k in cur if k[0] == V3_CONFIDENTIALITY}
    want_conf = {k for k in want if k[0] == V3_CONFIDENTIALITY}
    if len(want_conf) > 1:
        raise LabelError(
            "a resource carries exactly one confidentiality code; "
            f"asked for {sorted(c for _, c in want_conf)}"
        )
    add = set(want - cur)
    delete = set(drop & cur)
    if want_conf:
        [target] = want_conf
        top = max(cur_conf, key=_conf_rank, default=None)
        if top is not None and _conf_rank(target) < _conf_rank(top) and keep_higher:
            add.discard(target)
            target = top
        elif top is not None and _conf_rank(target) < _conf_rank(top) and not allow_lower:
            raise LabelError(
                f"refusing to lower confidentiality from {top[1]} to {target[1]} "
                "without an explicit request"
            )
        add.add(target)
        delete |= cur_conf - {target}
    elif len(cur_conf) > 1:
        # a server left two confidentiality codes: keep only the highest
        top = max(cur_conf, key=_conf_rank)
        delete |= cur_conf - {top}
    # exactly one provenance (integrity) code too (DS4P; the profiles require it): where two
    # accounts of who asserted the image meet (a hook that cannot see who made it, a second
    # submission of the same bytes), the less trusted one is kept, which asks more caution
    integrity = {k for k in cur | want if k in _TRUST} - drop
    if len(integrity) > 1:
        keep = min(integrity, key=_TRUST.__getitem__)
        add -= integrity - {keep}
        delete |= (cur & integrity) - {keep}
    after = (cur | add) - delete
    if cur_conf and not any(k[0] == V3_CONFIDENTIALITY for k in after):
        raise LabelError("refusing to remove the last confidentiality label")
    return LabelDelta(frozenset(add - cur), frozenset(delete))


def current_labels(client: FhirClient, ref: str) -> list[dict[str, Any]]:
    """A resource's labels, as the server's label strategy reads them (never a Binary's bytes)."""
    return client.profile.labels.read(client, ref)


def apply_labels(
    client: FhirClient,
    ref: str,
    desired: Iterable[dict[str, Any]],
    *,
    remove: Iterable[dict[str, Any]] = (),
    allow_lower: bool = False,
    keep_higher: bool = False,
    current: list[dict[str, Any]] | None = None,
    on_version: Callable[[str], None] | None = None,
) -> list[dict[str, str]]:
    """Change a resource's labels on the server and verify the result; return the labels.

    ``current`` may be given when the caller has just read (or created) the resource;
    ``allow_lower`` and ``keep_higher`` are as in :func:`plan_label_change`. ``on_version``
    is told the resource's version after the change, where the change made one and the server
    said which.
    """
    if current is None:
        current = current_labels(client, ref)
    delta = plan_label_change(
        current, desired, remove=remove, allow_lower=allow_lower, keep_higher=keep_higher
    )
    expected = delta.result(_key(c) for c in current)
    after: list[dict[str, Any]] | None = current
    if not delta.empty:
        # labels added here say who assigned them and why (DS4P); labels kept keep what they
        # carried (a server that replaces the whole list gets them back as they were)
        added = ds4p.annotate(_codings(delta.add))
        kept = {_key(x): x for x in current if _key(x) in expected}
        full = sorted([*kept.values(), *added], key=_key)
        written = client.profile.labels.write(client, ref, added, _codings(delta.delete), full)
        after = written.labels
        if on_version is not None and written.version is not None:
            on_version(written.version)
    if after is None:  # the server did not answer with the resulting labels: read them back
        after = current_labels(client, ref)
    got = {_key(c) for c in after}
    if got != expected:
        missing = sorted(c for _, c in expected - got)
        extra = sorted(c for _, c in got - expected)
        raise LabelVerificationFailed(
            f"{ref.split('/')[0]} labels on the server differ from those intended "
            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})"
        )
    version = client.version
    if version.declares_confidentiality and ref.startswith(f"{version.image_type}/"):
        synced = sync_declared_labels(client, ref, _codings(got))
        if on_version is not None and synced is not None:
            on_version(synced)
    return _codings(got)


def sync_declared_labels(client: FhirClient, ref: str, labels: list[dict[str, str]]) -> str | None:
    """Bring what an image states about its confidentiality in its content (R5's
    securityLabel) into line with its labels (If-Match), and verify it; the image's version
    afterwards where that made one (None when nothing needed changing)."""
    resource = client.read(ref)
    patch = client.version.declared_labels_patch(resource, labels)
    if patch is None:
        return None
    version = (resource.get("meta") or {}).get("versionId")
    client.patch(ref, patch, if_match=str(version) if version is not None else None)
    after = client.read(ref)
    if client.version.declared_labels_patch(after, labels) is not None:
        raise LabelVerificationFailed(
            f"{ref.split('/')[0]} states another confidentiality than its labels on the server"
        )
    made = (after.get("meta") or {}).get("versionId")
    return str(made) if made is not None else None


def _common_labels(*sets: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Every label of every set, with the highest confidentiality code alone."""
    keys = {_key(x) for labels in sets for x in labels}
    confs = {k for k in keys if k[0] == V3_CONFIDENTIALITY and k[1] in Confidentiality.__members__}
    keys -= {k for k in keys if k[0] == V3_CONFIDENTIALITY}
    if confs:
        keys.add(max(confs, key=_conf_rank))
    return _codings(keys)


def label_image(
    client: FhirClient,
    media_ref: str,
    desired: Iterable[dict[str, Any]],
    *,
    binary: str | None = None,
    current: list[dict[str, Any]] | None = None,
    binary_current: list[dict[str, Any]] | None = None,
    on_version: Callable[[str], None] | None = None,
) -> list[dict[str, str]]:
    """Label an image and its bytes alike: the Media and its Binary both end with every label
    either had plus ``desired``, and the highest confidentiality code of them all (labels are
    only added or raised here). Returns the labels, read back from both.

    ``on_version`` is as in :func:`apply_labels`, for the image. ``binary`` is the Binary's
    reference (read from the Media when not given; a Media whose content is not a Binary on
    this server has only its own labels changed).
    """
    from .common import binary_reference

    desired = list(desired)
    if binary is None:
        image = client.version.image(client.read(media_ref))
        current = image.labels.codings() if current is None else current
        binary = binary_reference(image.content_url, client.base_url)
    if current is None:
        current = current_labels(client, media_ref)
    if binary is not None and binary_current is None:
        binary_current = current_labels(client, binary)
    target = _common_labels(desired, current, binary_current or [])
    after = apply_labels(
        client, media_ref, target, current=current, keep_higher=True, on_version=on_version
    )
    if binary is not None:
        after_binary = apply_labels(
            client, binary, target, current=binary_current, keep_higher=True
        )
        if {_key(x) for x in after_binary} != {_key(x) for x in after}:
            raise LabelVerificationFailed(
                "the Binary's labels on the server differ from its Media's"
            )
    return after
