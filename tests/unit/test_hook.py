from __future__ import annotations

import json
import time

import pytest
import requests
import responses
from responses import matchers
from starlette.testclient import TestClient

from fhir_images import FhirClient
from fhir_images import _codes as c
from fhir_images._hook import SECRET_HEADER, HookService
from fhir_images.fhir import common
from fhir_images.fhir.r4 import read
from fhir_images.policy import DEFAULT, STRICT

BASE = "http://fhir.test/fhir"
SECRET = "s" * 24
CONF = c.V3_CONFIDENTIALITY


def media(**kw):
    data = {
        "resourceType": "Media",
        "id": "m1",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "operator": {"reference": "Practitioner/gp1"},
        "createdDateTime": "2026-11-20T10:00:00Z",
        "reasonCode": [{"text": "Rash review"}],
        "content": {"contentType": "image/jpeg", "url": "Binary/b1"},
    }
    data.update(kw)
    return data


ADULT = {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"}
CHILD = {"resourceType": "Patient", "id": "p1", "birthDate": "2024-08-02"}
CONSENT = {
    "resourceType": "Consent",
    "id": "c1",
    "status": "active",
    "performer": [{"reference": "Patient/p1"}],
    "provision": {
        "type": "deny",
        "provision": [
            {"type": "permit", "purpose": [{"system": c.V3_ACT_REASON, "code": "TREAT"}]}
        ],
    },
}


def assess(media_, patient, consents, policy=DEFAULT):
    """The pack's assessment of an image as the server holds it (views from R4 resources)."""
    return policy.assess(
        read.image(media_), common.patient(patient), [read.consent(x) for x in consents]
    )


def codes(labels) -> set[str]:
    return {x["code"] for x in labels}


def conf(labels) -> str:
    [x] = [x for x in labels if x["system"] == CONF]
    return x["code"]


# ------------------------------------------------------------------------------ assessment


def test_intimate_child_image_without_consent_gets_the_most_restrictive_labels():
    m = media(meta={"security": [{"system": c.LOCAL_SENSITIVITY, "code": "intimate"}]})
    result = assess(m, CHILD, [])
    assert conf(result.labels) == "V"
    assert {"PHY", "intimate", "young-child", "HUAPRV", "NOREUSE", "NORDSCLCDS"} <= codes(
        result.labels
    )
    assert any("Consent" in p for p in result.problems)


def test_unknown_intimacy_is_labelled_restrictively():
    result = assess(media(), ADULT, [CONSENT])
    assert result.complete
    assert conf(result.labels) == "R" and {"intimate", "PHY", "MINEC"} <= codes(result.labels)


def test_xray_needs_no_consent_and_stays_normal():
    m = media(modality={"coding": [{"system": c.DICOM, "code": "DX"}]})
    result = assess(m, ADULT, [])
    assert result.complete
    assert codes(result.labels) == {"N", "DEVAST"}


def test_missing_purpose_and_consent_are_reported():
    result = assess(media(reasonCode=[]), ADULT, [])
    assert not result.complete
    assert any("G8" in p for p in result.problems)
    assert "HUAPRV" in codes(result.labels)


def test_consent_that_does_not_permit_care_is_reported():
    deny = json.loads(json.dumps(CONSENT))
    deny["provision"]["provision"][0]["type"] = "deny"
    assert not assess(media(), ADULT, [deny]).complete
    inactive = {**CONSENT, "status": "inactive"}
    assert not assess(media(), ADULT, [inactive]).complete


def test_the_strict_pack_applies_to_images_arriving_by_other_routes():
    """An intimate image of a child, with a parent's consent on record: complete under the
    default pack, a problem under the strict one (S1)."""
    m = media(meta={"security": [{"system": c.LOCAL_SENSITIVITY, "code": "intimate"}]})
    assert assess(m, CHILD, [CONSENT]).complete
    strict = assess(m, CHILD, [CONSENT], policy=STRICT)
    assert any("S1" in p for p in strict.problems)
    assert conf(strict.labels) == "V"
    service = HookService(FhirClient(BASE, profile="hapi"), SECRET, policy="strict")
    assert service.labeller.policy is STRICT


def test_missing_birth_date_is_treated_as_a_child():
    result = assess(media(), {"resourceType": "Patient", "id": "p1"}, [CONSENT])
    assert conf(result.labels) == "V"
    assert any("birth date" in p for p in result.problems)


# -------------------------------------------------------------------------------- service


@pytest.fixture()
def service():
    return HookService(
        FhirClient(BASE, profile="hapi", fhir_version="4.0"),
        SECRET,
        queue_size=2,
        workers=1,
        retries=0,
        gather=0,  # a worker takes what is queued and no more: the queue can fill
    )


def wait_for(client, key, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = client.get("/health", headers={SECRET_HEADER: SECRET}).json()
        if health[key] >= value:
            return health
        time.sleep(0.05)
    raise AssertionError(f"{key} never reached {value}: {health}")


def test_health_shows_ids_only_to_callers_with_the_secret(service):
    service.stats.recent_failures.append("Media/secret-id: ServerUnavailable")
    with TestClient(service.app) as client:
        anyone = client.get("/health").json()
        insider = client.get("/health", headers={SECRET_HEADER: SECRET}).json()
    assert "recent_failures" not in anyone and "secret-id" not in json.dumps(anyone)
    assert insider["recent_failures"] == ["Media/secret-id: ServerUnavailable"]


@pytest.mark.parametrize("rid", ["ab\u00e9c", "a..b", "..", "a" * 65, "a%20b", "a_b"])
def test_ids_outside_fhirs_rules_are_not_queued(service, rid):
    with TestClient(service.app) as client:
        r = client.put(f"/hook/Media/{rid}", headers={SECRET_HEADER: SECRET})
        assert r.status_code in (400, 404), rid
        assert client.get("/health").json()["queued"] == 0


def test_a_body_over_the_cap_is_refused_without_being_read(service):
    service.max_body = 1000
    with TestClient(service.app) as client:
        r = client.put("/hook/Media/m1", headers={SECRET_HEADER: SECRET}, content=b"x" * 5000)
    assert r.status_code == 413 and service.stats.rejected == 1


def test_secret_is_required(service):
    with TestClient(service.app) as client:
        assert client.put("/hook/Media/1").status_code == 401
        assert client.put("/hook/Media/1", headers={SECRET_HEADER: "wrong" * 5}).status_code == 401
        assert client.get("/health").json()["rejected"] == 2
        # the FHIR server parses the answer as FHIR and retries anything else
        r = client.put("/hook/Media/1")
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert r.json()["resourceType"] == "OperationOutcome"


def test_only_media_and_consent(service):
    with TestClient(service.app) as client:
        r = client.put("/hook/Patient/1", headers={SECRET_HEADER: SECRET})
        assert r.status_code == 400
        r = client.put("/hook/Media/..%2F..%2Fetc", headers={SECRET_HEADER: SECRET})
        assert r.status_code in (400, 404)


def test_short_secret_refused():
    with pytest.raises(ValueError, match="16"):
        HookService(FhirClient(BASE), "short")


@responses.activate
def test_notification_labels_the_media_and_opens_a_task(service):
    responses.get(f"{BASE}/Media/m1", json=media())
    responses.get(f"{BASE}/Patient/p1", json=CHILD)
    responses.get(f"{BASE}/Consent", json={"resourceType": "Bundle"})
    responses.post(f"{BASE}/Media/m1/$meta-add", json={"resourceType": "Parameters"})
    responses.get(f"{BASE}/Media/m1/$meta", json={"resourceType": "Parameters", "parameter": []})
    responses.get(f"{BASE}/Task", json={"resourceType": "Bundle"})
    responses.post(BASE + "/", json={"resourceType": "Bundle", "entry": []})
    with TestClient(service.app) as client:
        r = client.put(
            "/hook/Media/m1", headers={SECRET_HEADER: SECRET}, content=json.dumps(media())
        )
        assert r.status_code == 202
        health = wait_for(client, "failed", 1)  # the mocked server does not keep the labels
    added = [
        json.loads(call.request.body)
        for call in responses.calls
        if call.request.url.endswith("$meta-add")
    ]
    sent = added[0]["parameter"][0]["valueMeta"]["security"]
    assert {"V", "HUAPRV", "PHY"} <= codes(sent)
    assert "LabelVerificationFailed" in health["recent_failures"][0]


@responses.activate
def test_full_queue_answers_503_and_duplicates_are_coalesced(service, monkeypatch):
    import fhir_images._hook as hook

    monkeypatch.setattr(hook.Labeller, "process", lambda self, t, i, **kw: time.sleep(0.5) or [])
    with TestClient(service.app) as client:
        h = {SECRET_HEADER: SECRET}
        statuses = [client.put(f"/hook/Media/{i}", headers=h).status_code for i in range(1, 5)]
        again = client.put("/hook/Media/4", headers=h)
    assert statuses[0] == 202
    assert 503 in statuses, statuses
    assert again.status_code in (202, 503)


@responses.activate
def test_server_outage_is_retried_then_reported(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    svc = HookService(
        FhirClient(BASE, profile="hapi", fhir_version="4.0"),
        SECRET,
        workers=1,
        retries=1,
        retry_delay=0.01,
    )
    responses.get(f"{BASE}/Media/m1", status=503)
    with TestClient(svc.app) as client:
        client.put("/hook/Media/m1", headers={SECRET_HEADER: SECRET})
        health = wait_for(client, "failed", 1)
    assert health["processed"] == 0
    gets = [call for call in responses.calls if call.request.url.endswith("/Media/m1")]
    assert len(gets) >= 2, "retried before reporting"


def test_logs_carry_no_patient_data(service, caplog):
    with TestClient(service.app) as client:
        client.put(
            "/hook/Media/1",
            headers={SECRET_HEADER: "nope"},
            content=json.dumps(media(subject={"reference": "Patient/nhs-943-476-5919"})),
        )
    assert "943" not in caplog.text


def _serve(service, header_timeout=10.0, max_idle=256):
    import socket
    import threading

    import uvicorn

    from fhir_images._hook import guarded_protocol

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            service.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            http=guarded_protocol(header_timeout, max_idle),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return server, thread, port


def test_idle_connections_do_not_delay_a_real_notification(service, monkeypatch):
    """300 connections that never finish their request head (no secret needed to open them)
    once made every notification 503. Now they are closed, oldest first."""
    import socket

    import fhir_images._hook as hook

    monkeypatch.setattr(hook.Labeller, "process", lambda self, t, i, **kw: [])
    server, thread, port = _serve(service, header_timeout=60.0, max_idle=100)
    idle = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"PUT /hook/Media/1 HTTP/1.1\r\nHost: x\r\n")  # never finished
            idle.append(s)
        started = time.monotonic()
        r = requests.put(
            f"http://127.0.0.1:{port}/hook/Media/m1", headers={SECRET_HEADER: SECRET}, timeout=10
        )
        took = time.monotonic() - started
        assert r.status_code == 202, r.text
        assert took < 5.0, f"a notification waited {took:.1f} s behind idle connections"
        time.sleep(1.0)
        closed = 0
        for s in idle:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:  # reset: closed with our unread bytes still in its buffer
                closed += 1
        assert closed >= 190, f"only {closed} of 300 idle connections were let go"
    finally:
        for s in idle:
            s.close()
        server.should_exit = True
        thread.join(timeout=10)


def test_a_connection_that_sends_no_request_head_is_closed(service):
    import socket

    server, thread, port = _serve(service, header_timeout=0.5)
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        started = time.monotonic()
        assert s.recv(10) == b"", "closed by the server"
        assert time.monotonic() - started < 4
        s.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def backport(kind: str, *focus: str) -> dict:
    """An R4 Backport notification as HFS sends it (id-only)."""
    events = [
        {
            "name": "notification-event",
            "part": [
                {"name": "event-number", "valueString": str(i + 1)},
                {"name": "focus", "valueReference": {"reference": ref}},
            ],
        }
        for i, ref in enumerate(focus)
    ]
    status = {
        "resourceType": "Parameters",
        "parameter": [{"name": "type", "valueCode": kind}, *events],
    }
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": status}]
        + [{"fullUrl": f"{BASE}/{ref}", "request": {"method": "GET", "url": ref}} for ref in focus],
    }


@pytest.fixture()
def quiet_service(service, monkeypatch):
    import fhir_images._hook as hook

    monkeypatch.setattr(hook.Labeller, "process", lambda self, t, i, **kw: time.sleep(0.2) or [])
    return service


def test_topic_notifications_queue_only_images_and_consents_named_by_id(quiet_service):
    h = {SECRET_HEADER: SECRET}
    with TestClient(quiet_service.app) as client:
        shake = client.post("/hook", headers=h, content=json.dumps(backport("handshake")))
        assert shake.status_code == 200
        beat = client.post("/hook", headers=h, content=json.dumps(backport("heartbeat")))
        assert beat.status_code == 200
        foreign = backport(
            "event-notification", "Patient/p1", "http://elsewhere.test/fhir/Media/m9", "../x"
        )
        assert client.post("/hook", headers=h, content=json.dumps(foreign)).status_code == 200
        assert quiet_service.stats.processed == 0 and client.get("/health").json()["queued"] == 0
        event = backport("event-notification", "Media/m1", f"{BASE}/Consent/c1")
        r = client.post("/hook", headers=h, content=json.dumps(event))
        assert r.status_code == 202
        wait_for(client, "processed", 1)


@pytest.mark.parametrize(
    "body, status",
    [
        (b"not json", 400),
        (b'{"resourceType": "Patient"}', 400),
        (b'{"resourceType": "Bundle", "resourceType": "Bundle"}', 400),
        (b"[" * 100_000, 400),
        (b" " * (2 << 20), 413),
    ],
)
def test_topic_notifications_that_are_not_bundles_are_refused(quiet_service, body, status):
    with TestClient(quiet_service.app) as client:
        r = client.post("/hook", headers={SECRET_HEADER: SECRET}, content=body)
        assert r.status_code == status
        assert client.post("/hook", content=json.dumps(backport("handshake"))).status_code == 401


def r5_notification(kind: str, *focus: str) -> dict:
    """An R5 notification as HAPI R5 sends it (id-only)."""
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": kind,
        "notificationEvent": [{"focus": {"reference": ref}} for ref in focus],
    }
    return {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [{"resource": status}] + [{"fullUrl": f"{ref}/_history/1"} for ref in focus],
    }


def test_r5_notifications_authenticate_by_the_path_token(monkeypatch):
    """HAPI R5 sends no header of a Subscription: the endpoint's path carries a token derived
    from the secret. A wrong token, the secret itself, or a token for another secret is
    refused; the token route takes no other notification shape than the header route."""
    import fhir_images._hook as hook
    from fhir_images.fhir.subscriptions import hook_path_token

    monkeypatch.setattr(hook.Labeller, "process", lambda self, t, i, **kw: time.sleep(0.2) or [])
    svc = HookService(FhirClient(BASE, profile="hapi", fhir_version="5.0"), SECRET, workers=1)
    token = hook_path_token(SECRET)
    assert SECRET not in token and len(token) >= 40
    event = json.dumps(r5_notification("event-notification", "DocumentReference/d1"))
    with TestClient(svc.app) as client:
        for wrong in ("x" * len(token), SECRET, hook_path_token(SECRET + "-other")):
            assert client.post(f"/hook/t/{wrong}", content=event).status_code == 401
        assert client.get("/health").json()["queued"] == 0
        shake = json.dumps(r5_notification("handshake"))
        assert client.post(f"/hook/t/{token}", content=shake).status_code == 200
        media = json.dumps(r5_notification("event-notification", "Media/m1"))
        assert client.post(f"/hook/t/{token}", content=media).status_code == 200  # not R5's
        assert svc.stats.processed == 0
        assert client.post(f"/hook/t/{token}", content=event).status_code == 202
        wait_for(client, "processed", 1)


# ------------------------------------------------------------- the echo of its own labelling


class _Server:
    """A stand-in for the server as the labeller reads it: one image, its version and labels."""

    def __init__(self):
        self.version = "1"
        self.labels: list[dict] = []
        self.assessed = 0

    def image(self, ref):
        return read.image(
            media(id=ref.split("/")[1], meta={"versionId": self.version, "security": self.labels})
        )

    def consents(self, ref):
        self.assessed += 1
        return [read.consent(CONSENT)]


@pytest.fixture()
def echoing(monkeypatch):
    """A labeller whose server keeps the labels it applies without a new version (as a meta
    operation does on HAPI)."""
    from fhir_images import _hook

    server = _Server()
    labeller = _hook.Labeller(FhirClient(BASE, profile="hapi", fhir_version="4.0"))
    monkeypatch.setattr(labeller.records, "image", server.image)
    monkeypatch.setattr(labeller.records, "patient", lambda ref: common.patient(ADULT))
    monkeypatch.setattr(labeller.records, "consents_for_image", server.consents)
    monkeypatch.setattr(
        labeller.records,
        "consent",
        lambda ref: read.consent(
            {
                **CONSENT,
                "provision": {
                    **CONSENT["provision"],
                    "data": [{"meaning": "instance", "reference": {"reference": "Media/m1"}}],
                },
            }
        ),
    )
    monkeypatch.setattr(labeller, "_own_binary", lambda image, result: None)
    monkeypatch.setattr(labeller, "_report", lambda *args: None)

    def apply(client, ref, desired, **kw):
        server.labels = [dict(x) for x in desired]
        return server.labels

    monkeypatch.setattr(_hook, "apply_labels", apply)
    return labeller, server


def test_the_echo_of_its_own_labelling_is_not_assessed_again(echoing):
    labeller, server = echoing
    assert len(labeller.process("Media", "m1")) == 1 and server.assessed == 1
    assert labeller.process("Media", "m1") == [] and server.assessed == 1
    assert labeller.echoes == 1


@pytest.mark.parametrize("change", ["label removed", "new version", "label added"])
def test_an_image_changed_since_it_was_labelled_is_assessed_again(echoing, change):
    labeller, server = echoing
    labeller.process("Media", "m1")
    if change == "label removed":
        server.labels = server.labels[1:]
    elif change == "new version":
        server.version = "2"
    else:
        server.labels = [*server.labels, {"system": c.V3_ACT_CODE, "code": "DELAU"}]
    assert len(labeller.process("Media", "m1")) == 1 and server.assessed == 2
    assert labeller.echoes == 0


@pytest.fixture()
def versioning(echoing, monkeypatch):
    """The same, on a server where a label write makes a new version (as a patch does on HFS),
    and answers with it (``says``) or not."""
    from fhir_images import _hook

    labeller, server = echoing
    says = {"version": True}

    def apply(client, ref, desired, *, on_version=None, **kw):
        server.labels = [dict(x) for x in desired]
        server.version = str(int(server.version) + 1)
        if says["version"] and on_version is not None:
            on_version(server.version)
        return server.labels

    monkeypatch.setattr(_hook, "apply_labels", apply)
    return labeller, server, says


def test_the_echo_of_a_label_write_that_made_a_version_is_known_by_that_version(versioning):
    labeller, server, _ = versioning
    labeller.process("Media", "m1")
    assert server.version == "2"
    assert labeller.process("Media", "m1") == [] and server.assessed == 1
    assert labeller.echoes == 1
    server.version = "3"  # changed by someone else since: news, assessed again
    assert len(labeller.process("Media", "m1")) == 1 and server.assessed == 2


def test_a_new_version_the_server_did_not_name_is_assessed_again(versioning):
    labeller, server, says = versioning
    says["version"] = False
    labeller.process("Media", "m1")
    assert len(labeller.process("Media", "m1")) == 1 and server.assessed == 2
    assert labeller.echoes == 0


def _left_state(labeller, ref="Media/m1"):
    return labeller._left[ref]


def test_a_notification_that_says_the_image_is_as_left_is_not_read(echoing, monkeypatch):
    labeller, _ = echoing
    labeller.process("Media", "m1")
    reads: list[str] = []
    monkeypatch.setattr(labeller.records, "image", lambda ref: reads.append(ref) or 1 / 0)
    claim = _left_state(labeller)
    assert labeller.process_many([("Media", "m1")], {"Media/m1": claim}) == [[]]
    assert reads == [] and labeller.echoes == 1


@pytest.mark.parametrize("change", ["label removed", "new version", "label added", "no version"])
def test_a_notification_that_says_anything_else_is_read(echoing, monkeypatch, change):
    """What the image is really in decides: a claim other than exactly as left only makes it
    read (here it is still as left on the server, so the read finds the echo)."""
    from fhir_images.fhir import Labels

    labeller, server = echoing
    labeller.process("Media", "m1")
    reads: list[str] = []
    monkeypatch.setattr(
        labeller.records, "image", lambda ref: reads.append(ref) or server.image(ref)
    )
    version, labels = _left_state(labeller)
    keys = sorted(labels.keys)
    claim = {
        "label removed": (version, Labels(frozenset(keys[1:]))),
        "new version": ("2", labels),
        "label added": (version, Labels(frozenset({*keys, (c.V3_ACT_CODE, "DELAU")}))),
        "no version": (None, labels),
    }[change]
    assert labeller.process_many([("Media", "m1")], {"Media/m1": claim}) == [[]]
    assert reads == ["Media/m1"] and labeller.echoes == 1


def test_an_image_never_labelled_is_read_whatever_its_notification_says(echoing):
    from fhir_images.fhir import Labels

    labeller, server = echoing
    claim = ("1", Labels.of([{"system": c.V3_CONFIDENTIALITY, "code": "R"}]))
    assert len(labeller.process_many([("Media", "m1")], {"Media/m1": claim})[0]) == 1
    assert server.assessed == 1 and labeller.echoes == 0


def test_a_consent_change_reassesses_the_images_it_names_as_they_are(echoing):
    labeller, server = echoing
    labeller.process("Media", "m1")
    assert len(labeller.process("Consent", "c1")) == 1 and server.assessed == 2


# ------------------------------------------------------------------- notifications in a batch


def _consent_naming(image: str, cid: str = "c1") -> dict:
    provision = {
        **CONSENT["provision"],
        "data": [{"meaning": "instance", "reference": {"reference": image}}],
    }
    return {**CONSENT, "id": cid, "provision": provision}


def _bundle(*resources):
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


@pytest.fixture()
def batch_labeller(monkeypatch):
    """A labeller on a mocked server whose label writes are recorded, not sent."""
    from fhir_images import _hook

    monkeypatch.setattr("time.sleep", lambda s: None)
    labeller = _hook.Labeller(FhirClient(BASE, profile="hapi", fhir_version="4.0"))
    applied: dict[str, set[str]] = {}

    def apply(client, ref, desired, **kw):
        applied[ref] = {x["code"] for x in desired}
        return list(desired)

    monkeypatch.setattr(_hook, "apply_labels", apply)
    monkeypatch.setattr(labeller, "_own_binary", lambda image, result: None)
    monkeypatch.setattr(labeller.records, "create_once", lambda task, cond: "Task/t1")
    created: list[list[str]] = []

    def create_many(resources):
        created.append([cond for _, cond in resources])
        return ["Task/t"] * len(resources)

    monkeypatch.setattr(labeller.records, "create_many", create_many)
    applied["__tasks__"] = created  # type: ignore[assignment]
    return labeller, applied


def _mock_two_images(single: bool):
    m1, m2 = media(id="m1"), media(id="m2")
    if single:
        responses.get(f"{BASE}/Media/m1", json=m1)
        responses.get(f"{BASE}/Media/m2", json=m2)
        responses.get(f"{BASE}/Patient/p1", json=ADULT)
        for image, found in (("m1", _bundle(_consent_naming("Media/m1"))), ("m2", _bundle())):
            responses.get(
                f"{BASE}/Consent",
                json=found,
                match=[
                    matchers.query_param_matcher({"data": f"Media/{image}"}, strict_match=False)
                ],
            )
    responses.get(f"{BASE}/Media", json=_bundle(m1, m2))
    responses.get(f"{BASE}/Patient", json=_bundle(ADULT))
    responses.get(f"{BASE}/Consent", json=_bundle(_consent_naming("Media/m1")))
    responses.get(f"{BASE}/Task", json=_bundle())


@responses.activate
def test_a_batch_reads_what_its_images_need_in_one_search_a_kind(batch_labeller):
    labeller, applied = batch_labeller
    _mock_two_images(single=False)
    results = labeller.process_many([("Media", "m1"), ("Media", "m2")])
    assert all(isinstance(r, list) and len(r) == 1 for r in results), results
    reads = [c.request.url.split("?")[0].rsplit("/", 1)[-1] for c in responses.calls]
    assert sorted(reads) == ["Consent", "Media", "Patient", "Task"], reads
    # the Consent naming m1 counts for m1 only: m2 is labelled as having none
    assert results[0][0].complete and not results[1][0].complete
    assert applied["Media/m2"] - applied["Media/m1"], "m2, without consent, is restricted"
    # one transaction opens the batch's Tasks: m2's
    assert applied["__tasks__"] == [[f"identifier={c.SID_HOOK_TASK}|Media/m2"]]


@responses.activate
def test_a_task_that_cannot_be_opened_leaves_its_notification_to_retry(batch_labeller, monkeypatch):
    from fhir_images._exceptions import ServerUnavailable

    labeller, _ = batch_labeller
    _mock_two_images(single=False)

    def refuse(*args):
        raise ServerUnavailable("down")

    monkeypatch.setattr(labeller.records, "create_many", refuse)
    monkeypatch.setattr(labeller.records, "create_once", refuse)
    first, second = labeller.process_many([("Media", "m1"), ("Media", "m2")])
    assert isinstance(first, list) and isinstance(second, ServerUnavailable)
    # and when it comes again it is assessed again, not taken for the echo of its labelling
    assert "Media/m2" not in labeller._left and "Media/m1" in labeller._left


@responses.activate
def test_a_batch_decides_as_one_by_one_would(batch_labeller):
    labeller, applied = batch_labeller
    _mock_two_images(single=True)
    one_by_one = [labeller.process("Media", i) for i in ("m1", "m2")]
    alone = dict(applied)
    labeller._left.clear()
    batched = labeller.process_many([("Media", "m1"), ("Media", "m2")])
    assert applied == alone
    assert [r[0].labels for r in one_by_one] == [r[0].labels for r in batched]


@responses.activate
@pytest.mark.parametrize("failing", ["Patient", "Consent", "Task"])
def test_a_batch_search_that_fails_is_read_one_by_one(batch_labeller, failing):
    """Nothing is decided on less than a read would give: a failed batch search of Consents
    does not mean no Consents."""
    labeller, _ = batch_labeller
    m1, m2 = media(id="m1"), media(id="m2")
    responses.get(f"{BASE}/Media", json=_bundle(m1, m2))
    for kind, answer in (
        ("Patient", _bundle(ADULT)),
        ("Consent", _bundle(_consent_naming("Media/m1"), _consent_naming("Media/m2", "c2"))),
        ("Task", _bundle()),
    ):
        if kind == failing:
            # the batch search (several values) fails; the search for one image answers
            responses.get(
                f"{BASE}/{kind}",
                status=400,
                json={"resourceType": "OperationOutcome"},
                match=[_several_values()],
            )
        responses.get(f"{BASE}/{kind}", json=answer)
    responses.get(f"{BASE}/Patient/p1", json=ADULT)
    results = labeller.process_many([("Media", "m1"), ("Media", "m2")])
    assert [r[0].complete for r in results] == [True, True], results


def _several_values():
    def match(request):
        several = "%2C" in request.url or "," in request.url.split("?", 1)[-1]
        return several, "" if several else "one value"

    return match


@responses.activate
def test_one_failing_notification_does_not_stop_the_rest_of_its_batch(batch_labeller):
    labeller, applied = batch_labeller
    m2 = media(id="m2")
    responses.get(f"{BASE}/Media", json=_bundle(m2))  # m1 is gone from the server
    responses.get(f"{BASE}/Media/m1", status=404, json={"resourceType": "OperationOutcome"})
    responses.get(f"{BASE}/Patient/p1", json=ADULT)
    responses.get(f"{BASE}/Consent", json=_bundle())
    responses.get(f"{BASE}/Task", json=_bundle())
    first, second = labeller.process_many([("Media", "m1"), ("Media", "m2")])
    assert isinstance(first, Exception) and isinstance(second, list) and "Media/m2" in applied


@responses.activate
def test_a_worker_gathers_notifications_that_come_soon_after_into_one_batch(monkeypatch):
    import fhir_images._hook as hook

    batches: list[list] = []
    monkeypatch.setattr(
        hook.Labeller,
        "process_many",
        lambda self, items, claims=None: batches.append(items) or [[]] * len(items),
    )
    service = HookService(
        FhirClient(BASE, profile="hapi", fhir_version="4.0"), SECRET, workers=1, gather=1.0
    )
    with TestClient(service.app) as client:
        h = {SECRET_HEADER: SECRET}
        for i in range(1, 4):
            assert client.put(f"/hook/Media/{i}", headers=h).status_code == 202
        deadline = time.monotonic() + 5
        while service.stats.processed < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert batches == [[("Media", "1"), ("Media", "2"), ("Media", "3")]]
    assert service.stats.processed == 3


def _claims_seen(monkeypatch):
    import fhir_images._hook as hook

    seen: list[dict] = []

    def process_many(self, items, claims=None):
        seen.append(dict(claims or {}))
        return [[]] * len(items)

    monkeypatch.setattr(hook.Labeller, "process_many", process_many)
    return seen


def _notified(body) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def test_a_classic_notification_passes_on_the_version_and_labels_its_body_claims(monkeypatch):
    from fhir_images.fhir import Labels

    seen = _claims_seen(monkeypatch)
    labels = [{"system": c.V3_CONFIDENTIALITY, "code": "R"}]
    body = media(id="m1", meta={"versionId": "3", "security": labels})
    service = HookService(FhirClient(BASE, profile="hapi", fhir_version="4.0"), SECRET)
    with TestClient(service.app) as client:
        r = client.put("/hook/Media/m1", headers={SECRET_HEADER: SECRET}, content=_notified(body))
        assert r.status_code == 202
        wait_for(client, "processed", 1)
    assert seen == [{"Media/m1": ("3", Labels.of(labels))}]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"resourceType": "Media", "id": "m1", "id": "m2", "meta": {"versionId": "1"}}',
        b"[" * 100_000 + b"]" * 100_000,
        {"resourceType": "Media", "id": "m2", "meta": {"versionId": "1"}},  # another image
        {"resourceType": "Consent", "id": "m1", "meta": {"versionId": "1"}},
        {"resourceType": "Media", "id": "m1", "meta": []},
        {"resourceType": "Media", "id": "m1", "meta": {"versionId": 1}},
        {"resourceType": "Media", "id": "m1", "meta": {"security": {"code": "R"}}},
        {"resourceType": "Media", "id": "m1", "meta": {"security": ["R"]}},
        {"resourceType": "Media", "id": "m1", "meta": {"versionId": "1", "x": "y" * 2_000_000}},
    ],
)
def test_a_body_that_is_not_this_image_well_formed_claims_nothing(monkeypatch, body):
    seen = _claims_seen(monkeypatch)
    service = HookService(FhirClient(BASE, profile="hapi", fhir_version="4.0"), SECRET)
    with TestClient(service.app) as client:
        r = client.put("/hook/Media/m1", headers={SECRET_HEADER: SECRET}, content=_notified(body))
        assert r.status_code == 202
        wait_for(client, "processed", 1)
    assert seen == [{}]


@pytest.mark.parametrize("second", ["same", "other", "none"])
def test_notifications_coalesced_keep_a_claim_only_when_they_agree(monkeypatch, second):
    """A notification coalesced with a queued one that claims another state (or none) must not
    let the first one's claim stand: the image is read."""
    seen = _claims_seen(monkeypatch)
    first = media(id="m1", meta={"versionId": "1"})
    then = {
        "same": first,
        "other": media(id="m1", meta={"versionId": "2"}),
        "none": b"",
    }[second]
    service = HookService(
        FhirClient(BASE, profile="hapi", fhir_version="4.0"), SECRET, workers=1, gather=1.0
    )
    with TestClient(service.app) as client:
        h = {SECRET_HEADER: SECRET}
        assert client.put("/hook/Media/m1", headers=h, content=_notified(first)).status_code == 202
        assert client.put("/hook/Media/m1", headers=h, content=_notified(then)).status_code == 202
        wait_for(client, "processed", 1)
    assert service.stats.coalesced == 1
    assert (seen == [{}]) is (second != "same"), seen


def test_a_batch_labels_different_images_side_by_side_and_never_one_image_twice_at_once(
    monkeypatch,
):
    """Two notifications of one image in a batch (a retry beside a new one) are handled one
    after the other, never by two writers at once; a Consent (which may name any of the
    batch's images) after every image."""
    import threading

    from fhir_images import _hook

    labeller = _hook.Labeller(FhirClient(BASE, profile="hapi", fhir_version="4.0"), parallel=4)
    monkeypatch.setattr(labeller, "prefetch", lambda refs: _hook.Known(to_open=[]))
    spans: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def process(rtype, rid, **kw):
        start = time.monotonic()
        time.sleep(0.2)
        with lock:
            spans.append((f"{rtype}/{rid}", start, time.monotonic()))
        return [rid]

    monkeypatch.setattr(labeller, "process", process)
    items = [("Media", "a"), ("Media", "b"), ("Media", "a"), ("Consent", "c")]
    assert labeller.process_many(items) == [["a"], ["b"], ["a"], ["c"]]
    by = {ref: [(s, e) for r, s, e in spans if r == ref] for ref in ("Media/a", "Media/b")}
    (a1, a2), (b,) = sorted(by["Media/a"]), by["Media/b"]
    assert a1[1] <= a2[0], "one image, two writers at once"
    assert b[0] < a1[1] and a1[0] < b[1], "different images are labelled side by side"
    consent = next(s for r, s, _ in spans if r == "Consent/c")
    assert consent >= max(e for r, _, e in spans if r != "Consent/c")
