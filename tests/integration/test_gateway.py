"""End to end: clients reach the server only through the gateway (started once per server)."""

from __future__ import annotations

import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn

from fhir_images import DisclosureRequest, FhirClient, withdraw_consent
from fhir_images import _codes as c
from fhir_images._approvals import approve, request_approval
from fhir_images._gateway import Gateway, TokenVerifier
from fhir_images._lifecycle import read_record

from .test_lifecycle import adult_image, audits_for, child_image, make_people

pytestmark = pytest.mark.integration

CONF = c.V3_CONFIDENTIALITY
SECRET = secrets.token_bytes(32)


def gateway_port() -> int:
    """A free port among those kept for the gateway's tests."""
    for port in range(28200, 28300):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 28200-28299")


def wait_for_health(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the gateway did not start")


def token(**claims: Any) -> str:
    body = {
        "sub": "Practitioner/gp1",
        "fhirUser": "Practitioner/gp1",
        "exp": int(time.time()) + 600,
        "scope": "user/*.cruds",
        "purpose_of_use": "TREAT",
        "clearance": "N",
        **claims,
    }
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def client(connect: Callable[..., FhirClient]) -> FhirClient:
    return connect()


@pytest.fixture(scope="module")
def gw(client: FhirClient) -> Iterator[str]:
    """The gateway in front of the server under test, in a thread, until the module ends."""
    port = gateway_port()
    url = f"http://127.0.0.1:{port}"
    gateway = Gateway(client, TokenVerifier(algorithm="HS256", secret=SECRET), public_url=url)
    config = uvicorn.Config(gateway, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    runner = threading.Thread(target=server.run, daemon=True)
    runner.start()
    wait_for_health(url)
    yield url
    server.should_exit = True
    runner.join(timeout=10)


@pytest.fixture()
def people(client: FhirClient) -> dict[str, str]:
    return make_people(client)


def get(gw: str, path: str, tok: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tok or token()}", **kw.pop("headers", {})}
    return httpx.get(gw + path, headers=headers, timeout=60, **kw)


def post_json(url: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/fhir+json"}
    return httpx.post(url, json=body, headers=headers, timeout=60)


def ids(bundle: dict[str, Any], rtype: str) -> set[str]:
    return {
        f"{rtype}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("resource", {}).get("resourceType") == rtype
    }


def approval_for(client: FhirClient, media: str, patient: str, clearance: str = "V") -> None:
    req = DisclosureRequest(
        purpose="TREAT", requester="Practitioner/gp1", role="clinician", clearance=clearance
    )
    task = request_approval(client, read_record(client, media), req, patient, ["HUAPRV"])
    approve(client, task, by="Practitioner/lead")


# ------------------------------------------------------------------------------ writes


def test_an_unlabelled_image_written_through_the_gateway_is_labelled_on_arrival(
    gw, client, people, image_type
):
    media: dict[str, Any] = {
        "resourceType": image_type,
        "status": "completed" if image_type == "Media" else "current",
        "subject": {"reference": people["child"]},
    }
    if image_type == "Media":
        media["content"] = {"contentType": "image/jpeg", "title": "photo"}
    else:
        media["content"] = [{"attachment": {"contentType": "image/jpeg", "title": "photo"}}]
    answer = post_json(f"{gw}/{image_type}", media)
    assert answer.status_code == 201, answer.text
    assert "|V" in answer.headers["X-Fhir-Images-Labels"]
    ref = f"{image_type}/{answer.json()['id']}"
    # straight from the server, right after the write returned
    labels = {(x["system"], x["code"]) for x in client.read(ref)["meta"]["security"]}
    assert (CONF, "V") in labels  # a child, no consent, no purpose: fail closed
    assert (c.V3_ACT_CODE, "HUAPRV") in labels


def test_a_raw_binary_without_a_security_context_is_labelled_restrictively(gw, client):
    answer = httpx.post(
        f"{gw}/Binary",
        content=b"\xff\xd8\xff\xe0 not really a jpeg" * 100,
        headers={"Authorization": f"Bearer {token()}", "Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    ref = f"Binary/{answer.json()['id']}"
    labels = {(x["system"], x["code"]) for x in client.binary_meta(ref)["meta"]["security"]}
    assert (CONF, "V") in labels and (c.V3_ACT_CODE, "HUAPRV") in labels


# ------------------------------------------------------------------------------- reads


def test_a_v_child_image_is_hidden_at_clearance_n_everywhere(
    gw, client, tmp_path, people, image_type
):
    child = child_image(client, tmp_path, people, 71)
    adult = adult_image(client, tmp_path, people, 72)
    before = len(audits_for(client, child.media))
    patient = people["child"]
    media_id = child.media.split("/")[1]
    binary = read_record(client, child.media).binary
    assert binary is not None

    # read, vread, Binary read, $binary-access-read
    read = get(gw, f"/{child.media}")
    assert read.status_code == 403 and "withheld" in read.text
    assert get(gw, f"/{child.media}/_history/1").status_code == 403
    assert get(gw, f"/{binary.ref}", headers={"Accept": "image/jpeg"}).status_code == 403
    assert get(gw, f"/{binary.ref}").status_code == 403
    assert get(gw, f"/{child.media}/$binary-access-read").status_code == 403
    # a missing image gets the same answer as a withheld one
    missing = get(gw, f"/{image_type}/no-such-{uuid.uuid4().hex[:8]}")
    assert missing.status_code == 403 and missing.json() == read.json()

    # search, include, history
    found = get(gw, f"/{image_type}", params={"subject": patient, "_count": "50"})
    assert found.status_code == 200, found.text
    assert child.media not in ids(found.json(), image_type) and "total" not in found.json()
    inc = get(
        gw,
        "/Patient",
        params={"_id": patient.split("/")[1], "_revinclude": f"{image_type}:subject"},
    )
    assert inc.status_code == 200, inc.text
    assert ids(inc.json(), image_type) == set() and ids(inc.json(), "Patient") == {patient}
    hist = get(gw, f"/{child.media}/_history")
    assert hist.status_code == 200 and ids(hist.json(), image_type) == set()
    type_hist = get(gw, f"/{image_type}/_history", params={"_count": "50"})
    assert media_id not in {e["resource"]["id"] for e in type_hist.json().get("entry", [])}

    # searches that could infer it are refused, and so is widening by _security:not
    assert (
        get(gw, "/Patient", params={"_has:" + image_type + ":subject:_security": "V"}).status_code
        == 403
    )
    assert get(gw, f"/{image_type}", params={"_security:not": f"{CONF}|V"}).status_code == 403
    assert get(gw, "/Consent", params={f"data:{image_type}._security": "V"}).status_code == 403
    assert get(gw, f"/{image_type}", params={"_summary": "count"}).status_code == 403

    # its Consent shows that it exists, and what was agreed: hidden with it
    consents = get(gw, "/Consent", params={"data": child.media})
    assert consents.status_code == 200, consents.text
    assert not consents.json().get("entry") and "total" not in consents.json()
    shown = get(gw, "/Consent", params={"data": adult.media})
    assert len(shown.json().get("entry", [])) == 1
    [consent] = read_record(client, child.media).consents
    assert get(gw, f"/{consent.ref}").status_code == 403

    # nothing was released, so nothing audited
    assert len(audits_for(client, child.media)) == before

    # the adult's N image with consent is released, and audited before it went out
    audited = len(audits_for(client, adult.media))
    ok = get(gw, f"/{adult.media}")
    assert ok.status_code == 200, ok.text
    assert len(audits_for(client, adult.media)) == audited + 1


def test_clearance_v_with_consent_and_approval_opens_it_and_withdrawal_closes_it(
    gw, client, tmp_path, people, image_type
):
    child = child_image(client, tmp_path, people, 73)
    v = token(clearance="V")
    # cleared, consented, but HUAPRV: a person must approve each disclosure
    assert get(gw, f"/{child.media}", v).status_code == 403
    approval_for(client, child.media, people["child"])
    shown = get(gw, f"/{child.media}", v)
    assert shown.status_code == 200, shown.text
    assert len(audits_for(client, child.media)) == 1
    approval_for(client, child.media, people["child"])
    found = get(gw, f"/{image_type}", v, params={"subject": people["child"]})
    assert child.media in ids(found.json(), image_type)
    assert len(audits_for(client, child.media)) == 2

    withdraw_consent(client, child.media, by=people["mum"], reason="asked to withdraw")
    approval_for(client, child.media, people["child"])
    assert get(gw, f"/{child.media}", v).status_code == 403
    assert len(audits_for(client, child.media)) == 2


def test_the_binary_of_a_released_image_streams_through(gw, client, tmp_path, people):
    adult = adult_image(client, tmp_path, people, 74)
    binary = read_record(client, adult.media).binary
    assert binary is not None
    raw = get(gw, f"/{binary.ref}", headers={"Accept": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert raw.content[:2] == b"\xff\xd8" and raw.headers["content-type"] == "image/jpeg"
    assert len(audits_for(client, adult.media)) == 1
    op = get(gw, f"/{adult.media}/$binary-access-read")
    assert op.status_code == 200 and op.content == raw.content
    assert len(audits_for(client, adult.media)) == 2


def test_other_resources_pass_through_and_paging_stays_behind_the_gateway(gw, client, people):
    found = get(gw, "/Patient", params={"_count": "1"})
    assert found.status_code == 200
    for link in found.json().get("link", []):
        assert link["url"].startswith(gw)
    for entry in found.json().get("entry", []):
        assert not entry["fullUrl"].startswith(client.base_url)
    nxt = [x["url"] for x in found.json().get("link", []) if x["relation"] == "next"]
    if nxt:
        page = httpx.get(nxt[0], headers={"Authorization": f"Bearer {token()}"}, timeout=60)
        assert page.status_code == 200, page.text


def test_admin_explain_names_the_rule(gw, client, tmp_path, people):
    child = child_image(client, tmp_path, people, 75)
    params = {"requester": "Practitioner/gp1", "purpose": "TREAT", "role": "clinician"}
    assert get(gw, f"/{child.media}/$explain", params=params).status_code == 403
    admin = token(scope="fhir-images/explain")
    answer = get(gw, f"/{child.media}/$explain", admin, params=params)
    assert answer.status_code == 200, answer.text
    parameters = {p["name"]: p for p in answer.json()["parameter"]}
    assert parameters["verdict"]["valueCode"] == "withhold"
    reasons = [p["valueString"] for p in answer.json()["parameter"] if p["name"] == "reason"]
    assert any("clearance is N" in r for r in reasons)


def test_a_transaction_is_labelled_with_the_record_it_brings(gw, client, image_type):
    """The Patient in the same transaction gives the birth date: an adult's image with no
    Consent yet is restricted (R), not treated as a child's (V)."""
    patient = {"resourceType": "Patient", "birthDate": "1970-01-01"}
    media: dict[str, Any] = {
        "resourceType": image_type,
        "status": "completed" if image_type == "Media" else "current",
        "subject": {"reference": "urn:uuid:p"},
    }
    if image_type == "Media":
        media["content"] = {"contentType": "image/jpeg", "title": "photo"}
    else:
        media["content"] = [{"attachment": {"contentType": "image/jpeg", "title": "photo"}}]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:p",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:m",
                "resource": media,
                "request": {"method": "POST", "url": image_type},
            },
        ],
    }
    answer = post_json(gw, bundle)
    assert answer.status_code == 200, answer.text
    locations = [e["response"]["location"] for e in answer.json()["entry"]]
    assert not any(x.startswith(client.base_url) for x in locations)  # never the server's
    ref = next(
        "/".join(x.removeprefix(gw + "/").split("/")[:2]) for x in locations if image_type in x
    )
    labels = {(x["system"], x["code"]) for x in client.read(ref)["meta"]["security"]}
    assert (CONF, "R") in labels and (CONF, "V") not in labels


class FailingTrail:
    atomic = False

    def record(self, audits: list[dict[str, Any]]) -> list[str]:
        from fhir_images import AuditError

        raise AuditError("the audit repository is down")


def test_a_release_that_cannot_be_audited_is_not_made(client, tmp_path, people, image_type):
    import asyncio

    adult = adult_image(client, tmp_path, people, 76)
    gateway = Gateway(
        client,
        TokenVerifier(algorithm="HS256", secret=SECRET),
        public_url="http://gw.test",
        audit=FailingTrail(),
    )

    async def ask(path: str, **params: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            try:
                return await http.get(
                    path, params=params, headers={"Authorization": f"Bearer {token()}"}
                )
            finally:
                await gateway.stop()

    read = asyncio.run(ask(f"/{adult.media}"))
    assert read.status_code == 503 and read.json()["resourceType"] == "OperationOutcome"
    assert adult.media.split("/")[1] not in read.text
    found = asyncio.run(ask(f"/{image_type}", subject=people["adult"]))
    assert found.status_code == 503 and image_type not in found.text.replace("OperationOutcome", "")


def test_the_gateway_logs_no_patient_data_or_tokens_at_full_verbosity(
    fhir_base_url, client, tmp_path, image_type
):
    import subprocess
    import sys

    canary = "CanaryPid7731"
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET.hex().encode())
    port = gateway_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhir_images.cli",
            "-vv",
            "gateway",
            "serve",
            "--upstream",
            fhir_base_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--jwt-secret-file",
            str(secret),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        wait_for_health(url)
        key = SECRET.hex().encode()
        good = jwt.encode(
            {
                "sub": "Practitioner/gp1",
                "exp": int(time.time()) + 600,
                "scope": "user/*.cruds",
                "purpose_of_use": "TREAT",
            },
            key,
            algorithm="HS256",
        )
        auth = {"Authorization": f"Bearer {good}"}
        client.update({"resourceType": "Patient", "id": canary, "birthDate": "1980-01-01"})
        httpx.get(f"{url}/Patient/{canary}", headers=auth, timeout=60)
        httpx.get(
            f"{url}/{image_type}", params={"subject": f"Patient/{canary}"}, headers=auth, timeout=60
        )
        httpx.get(
            f"{url}/Patient", params={"_has:Media:subject:_id": canary}, headers=auth, timeout=60
        )
        httpx.get(
            f"{url}/Patient/{canary}", headers={"Authorization": f"Bearer {canary}.x.y"}, timeout=60
        )
        media = {
            "resourceType": image_type,
            "status": "completed" if image_type == "Media" else "current",
            "subject": {"reference": f"Patient/{canary}"},
        }
        httpx.post(f"{url}/{image_type}", json=media, headers=auth, timeout=60)
        httpx.post(
            f"{url}/Binary",
            content=canary.encode(),
            headers={
                **auth,
                "Content-Type": "image/jpeg",
                "X-Security-Context": f"{image_type}/{canary}",
            },
            timeout=60,
        )
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    text = err.decode(errors="replace")
    assert "gateway: read Patient" in text  # the logs were on
    assert canary not in text, text[-2000:]
    assert good not in text and SECRET.hex() not in text


def test_the_bytes_of_a_hidden_image_cannot_be_written_over(gw, client, tmp_path, people):
    child = child_image(client, tmp_path, people, 77)
    binary = read_record(client, child.media).binary
    assert binary is not None
    before = client.binary_meta(binary.ref)["meta"]["security"]
    bid = binary.ref.split("/")[1]
    raw = httpx.put(
        f"{gw}/{binary.ref}",
        content=b"replaced",
        headers={"Authorization": f"Bearer {token()}", "Content-Type": "image/jpeg"},
        timeout=60,
    )
    assert raw.status_code == 403, raw.text
    as_json = httpx.put(
        f"{gw}/{binary.ref}",
        json={"resourceType": "Binary", "id": bid, "contentType": "image/jpeg", "data": "eA=="},
        headers={"Authorization": f"Bearer {token()}", "Content-Type": "application/fhir+json"},
        timeout=60,
    )
    assert as_json.status_code == 403, as_json.text
    after = client.binary_meta(binary.ref)
    assert (
        after["meta"]["security"] == before and after["meta"].get("versionId") == binary.version_id
    )


def test_other_resources_are_written_through_unchanged(gw, client):
    sent = {"resourceType": "Practitioner", "name": [{"family": "Gateway"}]}
    answer = post_json(f"{gw}/Practitioner", sent)
    assert answer.status_code == 201, answer.text
    assert "X-Fhir-Images-Labels" not in answer.headers
    stored = client.read(f"Practitioner/{answer.json()['id']}")
    assert stored["name"] == sent["name"] and not stored.get("meta", {}).get("security")
    assert not answer.headers.get("location", "").startswith(client.base_url)


def test_a_requester_unknown_to_the_server_is_told_so(gw, client, tmp_path, people):
    adult = adult_image(client, tmp_path, people, 78)
    stranger = token(sub="Practitioner/nobody-here", fhirUser="Practitioner/nobody-here")
    answer = get(gw, f"/{adult.media}", stranger)
    if audit_refs_checked(client):
        assert answer.status_code == 403 and "fhirUser" in answer.text
    else:  # an audit file names anyone: released, audited
        assert answer.status_code == 200


def audit_refs_checked(client: FhirClient) -> bool:
    """Whether audits go to the server itself (which checks the references in them)."""
    from fhir_images.fhir.audit import ServerAudit, audit_trail

    return isinstance(audit_trail(client), ServerAudit)
