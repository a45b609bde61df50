from __future__ import annotations

import json
import os
import stat

import pytest

from fhir_images import (
    EntryNotFound,
    Outbox,
    OutboxError,
    Outcome,
    UnsupportedMediaType,
    ingest,
    recheck,
    synthetic,
)

from ..factories import child_context, make_consent, make_context, parent_consent


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _leftovers(outbox) -> list:
    """What is in the temporary folder besides this process's own (empty) work folder."""
    found = [p for p in (outbox.root / ".tmp").iterdir() if p != outbox.work]
    found += [p for p in outbox.work.iterdir() if p.name != ".lock"]
    return found


def test_stored_image_is_a_complete_ready_entry(outbox):
    result = ingest(synthetic.jpeg(gps=True), make_context(), make_consent(), outbox=outbox)
    assert result.decision.outcome is Outcome.STORE
    entry = result.entry
    assert entry is not None and entry.state == "ready"
    names = {p.name for p in entry.path.iterdir()}
    assert names == {"entry.json", "bundle.json", "context.json", "consent.json", "content.jpg"}
    bundle = json.loads(entry.bundle_path.read_text())
    media = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media")
    binary = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary")
    assert media["content"]["url"] == f"Binary/{binary['resource']['id']}"
    assert media["content"]["size"] == entry.content_path.stat().st_size


def test_entries_are_owner_only(outbox):
    result = ingest(synthetic.jpeg(), child_context(), None, outbox=outbox)
    assert result.entry is not None and result.entry.state == "held"
    assert _mode(result.entry.path) == 0o700
    for p in result.entry.path.iterdir():
        assert _mode(p) == 0o600, p.name
    for sub in ("ready", "held", "discarded"):
        assert _mode(outbox.root / sub) == 0o700


def test_held_image_is_kept_not_dropped(outbox):
    result = ingest(synthetic.jpeg(gps=True), child_context(), None, outbox=outbox)
    assert result.decision.outcome is Outcome.HOLD
    [held] = list(outbox.entries("held"))
    assert held.content_path.exists()
    assert not (held.path / "bundle.json").exists(), "a held image is not ready to send"
    assert list(outbox.entries("ready")) == []


def test_refused_image_leaves_nothing(outbox):
    result = ingest(synthetic.jpeg(), make_context(purpose=None), make_consent(), outbox=outbox)
    assert result.decision.outcome is Outcome.REFUSE
    assert result.entry is None
    assert list(outbox.entries()) == []
    assert _leftovers(outbox) == []


def test_bad_input_leaves_nothing(outbox, tmp_path):
    path = tmp_path / "letter.jpg"
    path.write_bytes(synthetic.pdf())
    with pytest.raises(UnsupportedMediaType):
        ingest(path, make_context(), make_consent(), outbox=outbox)
    assert list(outbox.entries()) == []
    assert _leftovers(outbox) == []


def test_crash_while_writing_leaves_no_entry(outbox, monkeypatch):
    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(OutboxError, match="No space"):
        ingest(synthetic.jpeg(), make_context(), make_consent(), outbox=outbox)
    monkeypatch.undo()
    assert list(outbox.entries()) == []
    assert _leftovers(outbox) == []


def test_same_image_same_patient_is_not_queued_twice(outbox):
    data = synthetic.jpeg()
    first = ingest(data, make_context(), make_consent(), outbox=outbox)
    second = ingest(data, make_context(), make_consent(), outbox=outbox)
    assert second.duplicate_of == first.entry.id
    assert len(list(outbox.entries("ready"))) == 1
    other = ingest(
        data,
        make_context(patient="Patient/p2", operator="Patient/p2"),
        make_consent(),
        outbox=outbox,
    )
    assert other.duplicate_of is None
    assert len(list(outbox.entries("ready"))) == 2


def test_held_images_are_not_queued_twice_either(outbox):
    data = synthetic.jpeg()
    first = ingest(data, child_context(), None, outbox=outbox)
    second = ingest(data, child_context(), None, outbox=outbox)
    assert first.entry.state == "held" and second.duplicate_of == first.entry.id
    assert len(list(outbox.entries("held"))) == 1


def test_same_image_with_another_consent_act_is_a_new_entry(outbox):
    data = synthetic.jpeg()
    first = ingest(data, make_context(), make_consent(), outbox=outbox)
    changed = make_consent(permissions={"view": True, "store": True, "second_opinion": False})
    second = ingest(data, make_context(), changed, outbox=outbox)
    assert second.duplicate_of is None and second.entry.id != first.entry.id


def _ingest_in_child(root: str, queue) -> None:  # runs in another process
    from fhir_images import Outbox as Box

    box = Box(root)
    result = ingest(synthetic.jpeg(seed=77), make_context(), make_consent(), outbox=box)
    queue.put(result.duplicate_of or result.entry.id)


def test_simultaneous_ingests_of_one_photo_make_one_entry(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    root = str(tmp_path / "shared")
    procs = [ctx.Process(target=_ingest_in_child, args=(root, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    ids = {queue.get(timeout=5) for _ in procs}
    assert len(ids) == 1, "four submissions of one photo: one entry"
    assert len(list(Outbox(root).entries())) == 1


def test_work_of_a_killed_process_is_cleared_whatever_its_age(tmp_path):
    root = tmp_path / "ob"
    Outbox(root)
    dead = root / ".tmp" / "w-999999-deadbeef"
    dead.mkdir()
    (dead / ".lock").write_text("")
    (dead / "intake-partial").write_bytes(b"\xff" * 1000)  # a half-copied image
    stray = root / ".tmp" / "left-by-an-old-version"
    stray.mkdir()
    live = Outbox(root)
    assert not dead.exists() and not stray.exists()
    other = Outbox(root)  # a second process-like user does not remove the live one's folder
    assert live.work.exists() and other.work.exists()


def test_entries_written_by_the_previous_version_are_read(outbox):
    entry = ingest(synthetic.jpeg(), make_context(), make_consent(), outbox=outbox).entry
    old = {
        "id": entry.id,
        "state": "ready",
        "content": entry.meta.content,
        "created": entry.meta.created.isoformat(),
        "patient": entry.meta.patient,
        "sha256": entry.meta.sha256,
        "media_type": entry.meta.media_type,
        "size": entry.meta.size,
        "decision": entry.meta.decision,
        "facts": entry.meta.facts,
        "binary_placeholder": "urn:uuid:x",
        "delivery": {"attempts": 2, "last_error": "x", "binary": "Binary/1"},
    }
    (entry.path / "entry.json").write_text(json.dumps(old))
    again = outbox.get(entry.id)
    assert again.meta.image_key == entry.meta.image_key
    assert again.meta.consent_key == entry.meta.consent_key
    assert again.meta.delivery.attempts == 2


def test_recheck_with_confirmed_consent_moves_held_to_ready(outbox):
    held = ingest(synthetic.jpeg(), child_context(), None, outbox=outbox).entry
    result = recheck(outbox, held.id, parent_consent())
    assert result.decision.outcome is Outcome.STORE
    assert result.entry.state == "ready" and result.entry.id == held.id
    assert not held.path.exists()
    assert (result.entry.path / "bundle.json").exists()


def test_recheck_with_insufficient_consent_stays_held(outbox):
    held = ingest(synthetic.jpeg(), child_context(), None, outbox=outbox).entry
    result = recheck(outbox, held.id, parent_consent(parental_responsibility=False))
    assert result.decision.outcome is Outcome.HOLD
    assert outbox.get(held.id).state == "held"
    reasons = outbox.get(held.id).meta.decision["reasons"]
    assert any(r["rule"] == "G5" and r["outcome"] == "hold" for r in reasons)


def test_recheck_keeps_the_policy_it_was_held_under(outbox):
    ctx = child_context(intimate=False)
    held = ingest(synthetic.jpeg(), ctx, None, outbox=outbox, policy="strict").entry
    assert held.state == "held"
    result = recheck(outbox, held.id, parent_consent())
    assert result.decision.policy == "strict"


def test_recheck_that_refuses_keeps_the_image_until_discarded(outbox):
    held = ingest(synthetic.jpeg(), make_context(), None, outbox=outbox).entry
    result = recheck(outbox, held.id, make_consent(permissions={"view": True, "store": False}))
    assert result.decision.outcome is Outcome.REFUSE
    assert outbox.get(held.id).state == "held", "refused on recheck: kept until discarded"


def test_discard_is_recorded_without_the_image(outbox):
    held = ingest(synthetic.jpeg(), child_context(), None, outbox=outbox).entry
    with pytest.raises(OutboxError, match="who"):
        outbox.discard(held.id, by="", reason="duplicate")
    record = outbox.discard(held.id, by="Practitioner/gp1", reason="Parent withdrew the photo")
    assert record["by"] == "Practitioner/gp1" and record["was"] == "held"
    assert not held.path.exists()
    assert outbox.discarded()[0]["reason"] == "Parent withdrew the photo"
    with pytest.raises(EntryNotFound):
        outbox.get(held.id)


def test_outbox_folder_unusable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError):
        Outbox(blocker / "outbox")


def test_an_entry_is_delivered_by_one_process_at_a_time(outbox):
    entry = ingest(synthetic.jpeg(), make_context(), make_consent(), outbox=outbox).entry
    other = Outbox(outbox.root)
    with outbox.claim(entry.id) as first, other.claim(entry.id) as second:
        assert first and not second
    with other.claim(entry.id) as again:
        assert again, "released when the first is done"
