"""End to end: HAPI calls the running hook service through a REST-hook Subscription."""

from __future__ import annotations

import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
import uvicorn

from fhir_images import FhirClient
from fhir_images import _codes as c
from fhir_images._codes import SID_HOOK_TASK
from fhir_images._hook import HookService, install_subscriptions

pytestmark = pytest.mark.integration

LABEL_TIMEOUT = 90.0
CONF = c.V3_CONFIDENTIALITY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hook(connect: Callable[..., FhirClient]) -> Iterator[tuple[FhirClient, HookService]]:
    client = connect()
    secret = secrets.token_urlsafe(24)
    service = HookService(client, secret, workers=2)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "hook service did not start"
        time.sleep(0.1)
    service.public_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    refs = install_subscriptions(client, f"http://127.0.0.1:{port}", secret)
    # idempotent: installing again reuses the same Subscriptions
    assert install_subscriptions(client, f"http://127.0.0.1:{port}", secret) == refs
    if client.version.name == "R5":
        # HAPI R5 loads a new SubscriptionTopic on a schedule (about a minute after it is
        # created, whatever the Subscription's status says): wait until a first image is seen
        pid = f"warm-{uuid.uuid4().hex[:10]}"
        client.update({"resourceType": "Patient", "id": pid, "birthDate": "1975-05-05"})
        client.update({"resourceType": "Practitioner", "id": "gp1"})
        deadline = time.monotonic() + 240
        while True:  # an image written before the topic is loaded is never notified: write again
            try:
                wait_labelled(client, create_media(client, f"Patient/{pid}"), timeout=10)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "HAPI R5 never notified the hook"
    yield client, service
    for ref in refs:
        client.delete(ref)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def patients(hook) -> dict[str, str]:
    client, _ = hook
    tag = uuid.uuid4().hex[:10]
    client.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Patient",
                        "id": f"ha-{tag}",
                        "birthDate": "1975-05-05",
                    },
                    "request": {"method": "PUT", "url": f"Patient/ha-{tag}"},
                },
                {
                    "resource": {
                        "resourceType": "Patient",
                        "id": f"hc-{tag}",
                        "birthDate": "2024-01-01",
                    },
                    "request": {"method": "PUT", "url": f"Patient/hc-{tag}"},
                },
                {
                    "resource": {"resourceType": "Practitioner", "id": "gp1"},
                    "request": {"method": "PUT", "url": "Practitioner/gp1"},
                },
            ],
        }
    )
    return {"adult": f"Patient/ha-{tag}", "child": f"Patient/hc-{tag}"}


def create_binary(client: FhirClient) -> str:
    """Bytes as another system uploads them: no labels, no securityContext."""
    binary = {"resourceType": "Binary", "contentType": "image/jpeg", "data": "/9j/2wBDAA=="}
    return f"Binary/{client.create(binary)['id']}"


def create_media(
    client: FhirClient, subject: str, binary: str | None = None, *, kind: str | None = None, **extra
) -> str:
    """An image as another system writes it: a Media (R4) or a DocumentReference (R5) with a
    purpose and an operator, no labels; ``kind`` a DICOM modality code."""
    url = binary or create_binary(client)
    modality = {"coding": [{"system": c.DICOM, "code": kind}]} if kind else None
    if client.version.image_type == "Media":
        image = {
            "resourceType": "Media",
            "status": "completed",
            "subject": {"reference": subject},
            "operator": {"reference": "Practitioner/gp1"},
            "reasonCode": [{"text": "Review of a skin lesion"}],
            "content": {"contentType": "image/jpeg", "url": url},
            **({"modality": modality} if modality else {}),
            **extra,
        }
    else:
        image = {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": {"reference": subject},
            "author": [{"reference": "Practitioner/gp1"}],
            "description": "Review of a skin lesion",
            "content": [{"attachment": {"contentType": "image/jpeg", "url": url}}],
            **({"modality": [modality]} if modality else {}),
            **extra,
        }
    return f"{image['resourceType']}/{client.create(image)['id']}"


def content_url(client: FhirClient, image_ref: str) -> str:
    url = client.version.image(client.read(image_ref)).content_url
    assert url is not None
    return url


def binary_of(client: FhirClient, media_ref: str) -> dict:
    return client.binary_meta(content_url(client, media_ref))


def labels_of(client: FhirClient, ref: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in client.read(ref).get("meta", {}).get("security", []):
        out.setdefault(s["system"], set()).add(s["code"])
    return out


def wait_labelled(
    client: FhirClient, ref: str, *, extra: str | None = None, timeout: float = LABEL_TIMEOUT
) -> dict[str, set[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        labels = labels_of(client, ref)
        if CONF in labels and (extra is None or any(extra in v for v in labels.values())):
            return labels
        time.sleep(0.5)
    raise AssertionError(f"{ref} was not labelled within {timeout:.0f} s: {labels}")


def tasks_for(client: FhirClient, ref: str) -> list[dict]:
    return list(client.search("Task", {"identifier": f"{SID_HOOK_TASK}|{ref}"}))


def wait_tasks(client: FhirClient, ref: str) -> list[dict]:
    """The hook's Tasks for an image, once there is one (it labels first, then reports)."""
    deadline = time.monotonic() + LABEL_TIMEOUT
    while not (found := tasks_for(client, ref)):
        assert time.monotonic() < deadline, f"no Task for {ref}"
        time.sleep(0.5)
    return found


def test_media_created_without_labels_is_labelled_and_reported(hook, patients):
    client, _ = hook
    ref = create_media(client, patients["adult"])
    labels = wait_labelled(client, ref, extra="HUAPRV")
    assert labels[CONF] == {"R"}, "no consent on record: restricted"
    assert {"HUAPRV", "NOREUSE", "NORDSCLCDS"} <= labels[c.V3_ACT_CODE]
    [task] = wait_tasks(client, ref)
    assert task["status"] == "requested" and "Consent" in task["description"]


def test_intimate_image_of_a_child_without_consent_gets_the_most_restrictive_labels(hook, patients):
    client, _ = hook
    ref = create_media(
        client,
        patients["child"],
        meta={"security": [{"system": c.LOCAL_SENSITIVITY, "code": "intimate"}]},
    )
    labels = wait_labelled(client, ref, extra="HUAPRV")
    assert labels[CONF] == {"V"}
    assert {"PHY", "HUAPRV", "NOREUSE", "NORDSCLCDS"} <= labels[c.V3_ACT_CODE]
    assert {"intimate", "young-child"} <= labels[c.LOCAL_SENSITIVITY]
    assert wait_tasks(client, ref)
    binary = binary_of(client, ref)
    assert {s["code"] for s in binary["meta"]["security"]} == {
        code for codes in labels.values() for code in codes
    }, "the bytes carry the image's labels"
    assert binary["securityContext"] == {"reference": ref}


def test_bytes_the_hook_cannot_label_are_reported(hook, patients):
    client, _ = hook
    missing = create_media(client, patients["adult"], binary="Binary/not-there")
    other = create_media(client, patients["adult"])
    shared = content_url(client, other)
    wait_labelled(client, other, extra="HUAPRV")  # the hook gave that Binary to `other`
    borrowed = create_media(client, patients["child"], binary=shared)
    for ref, why in ((missing, "could not be labelled"), (borrowed, "belong to another")):
        labels = wait_labelled(client, ref, extra="HUAPRV")
        assert c.Confidentiality[next(iter(labels[CONF]))] >= c.Confidentiality.R
        deadline = time.monotonic() + LABEL_TIMEOUT
        while not [t for t in tasks_for(client, ref) if why in t.get("description", "")]:
            assert time.monotonic() < deadline, f"no Task saying the bytes {why}"
            time.sleep(0.5)
    assert binary_of(client, other)["securityContext"] == {"reference": other}


def test_xray_with_purpose_is_labelled_normal_without_a_task(hook, patients):
    client, _ = hook
    ref = create_media(client, patients["adult"], kind="DX")
    labels = wait_labelled(client, ref)
    assert labels[CONF] == {"N"} and labels[c.V3_OBSERVATION_VALUE] == {"DEVAST"}
    time.sleep(2)
    assert tasks_for(client, ref) == []


def test_consent_recorded_later_closes_the_task_without_lowering_labels(hook, patients):
    client, _ = hook
    ref = create_media(client, patients["adult"])
    wait_labelled(client, ref, extra="HUAPRV")
    wait_tasks(client, ref)  # the consent is recorded later: after the hook has reported
    client.create(care_consent(client, patients["adult"], ref))
    deadline = time.monotonic() + LABEL_TIMEOUT
    while time.monotonic() < deadline:
        [task] = tasks_for(client, ref)
        if task["status"] == "completed":
            break
        time.sleep(0.5)
    assert task["status"] == "completed"
    assert labels_of(client, ref)[CONF] == {"R"}, "labels are never lowered by the hook"


def test_its_own_echo_is_let_be_but_a_label_removed_after_is_put_back(hook, patients):
    """The notification of the hook's own label write is known as its echo (on HAPI R4 from
    the state the notification claims, elsewhere from a read); a label someone removes
    afterwards notifies too, claims another state, and is assessed: the label comes back."""
    client, service = hook
    labeller = service.labeller
    echoes = labeller.echoes
    ref = create_media(client, patients["adult"])
    wait_labelled(client, ref, extra="HUAPRV")
    deadline = time.monotonic() + LABEL_TIMEOUT
    while labeller.echoes == echoes:
        assert time.monotonic() < deadline, "the echo of the hook's labelling never came"
        time.sleep(0.2)
    current = client.read(ref)["meta"]["security"]
    gone = [x for x in current if x["code"] == "HUAPRV"]
    left = [x for x in current if x["code"] != "HUAPRV"]
    written = client.profile.labels.write(client, ref, [], gone, left)
    if written.labels is not None:  # the server said what it left (reading now would race)
        assert "HUAPRV" not in {x["code"] for x in written.labels}
    wait_labelled(client, ref, extra="HUAPRV")


def care_consent(client: FhirClient, patient: str, image_ref: str) -> dict:
    """The patient's Consent to care use of one image, as another system records it."""
    data = [{"meaning": "instance", "reference": {"reference": image_ref}}]
    treat = [{"system": c.V3_ACT_REASON, "code": "TREAT"}]
    if client.version.name == "R4":
        return {
            "resourceType": "Consent",
            "status": "active",
            "scope": {"coding": [{"system": c.CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": c.LOINC, "code": "59284-0"}]}],
            "patient": {"reference": patient},
            "performer": [{"reference": patient}],
            "policy": [{"uri": c.GMC_RECORDINGS_POLICY}],
            "provision": {
                "type": "deny",
                "data": data,
                "provision": [{"type": "permit", "purpose": treat}],
            },
        }
    return {
        "resourceType": "Consent",
        "status": "active",
        "category": [{"coding": [{"system": c.LOINC, "code": "59284-0"}]}],
        "subject": {"reference": patient},
        "grantor": [{"reference": patient}],
        "decision": "deny",
        "provision": [{"purpose": treat, "data": data}],
    }


def test_unauthenticated_callers_are_refused(hook):
    _, service = hook
    before = service.stats.rejected
    r = requests.put(f"{service.public_url}/hook/Media/1", data=b"{}", timeout=10)
    assert r.status_code == 401
    assert requests.get(f"{service.public_url}/health", timeout=10).json()["rejected"] == (
        before + 1
    )
