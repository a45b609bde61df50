"""Who is asking: a SMART on FHIR style bearer token, verified, read into a :class:`Caller`.

The token is a JWT signed with the one key and the one algorithm the gateway is configured
with (HS256 and a shared secret; RS256 and a public key, or a JWKS file whose keys are picked by
``kid``). Anything else is refused before it is read: an unsigned token (``alg: none``), another
algorithm (an HS256 token "signed" with the RS256 public key as its secret), a token without
``exp``, an expired one, one not yet valid, or (when configured) one for another audience or
from another issuer.

Claims read (and documented in the README):

* ``fhirUser`` (else ``sub``): the requester, a FHIR reference (``Practitioner/1``) or a URL
  ending in one;
* ``scope`` (a space-separated string, or ``scp`` as a list): SMART scopes, v2
  (``user/Media.rs``, ``patient/*.cruds``, ``system/*.r``) and v1 (``user/*.read``,
  ``user/Media.write``, ``user/*.*``);
* ``patient``: the patient of ``patient/`` scopes;
* ``purpose_of_use``: an HL7 v3 PurposeOfUse code (``TREAT``, ``COC``, ``PATRQT``, ...);
* ``clearance``: the highest confidentiality the requester is cleared for (``N``, ``R``,
  ``V``; ``N`` when absent);
* ``role``: the capacity they ask in (``clinician``, ``patient``, ``family``, ``legal``,
  ``researcher``, ``teacher``); when absent, from the type of ``fhirUser``.

The admin scope ``fhir-images/explain`` allows the explain operation; it grants nothing else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import jwt
from jwt.algorithms import RSAAlgorithm

from .._inputs import reference_parts
from ..policy.disclosure import Clearance, Purpose, Role

__all__ = ["ADMIN_SCOPE", "Caller", "Scope", "TokenError", "TokenVerifier"]

ADMIN_SCOPE = "fhir-images/explain"

_PURPOSES = frozenset(get_args(Purpose))
_ROLES = frozenset(get_args(Role))
_CLEARANCES = frozenset(get_args(Clearance))
_ROLE_BY_TYPE = {
    "Practitioner": "clinician",
    "PractitionerRole": "clinician",
    "Patient": "patient",
    "RelatedPerson": "family",
}
#: SMART v1 permissions in v2 terms
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")
_MAX_TOKEN = 16 * 1024
#: what each verification failure is called (never the claim's value)
_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.MissingRequiredClaimError, "the token has no exp (expiry) claim"),
    (jwt.InvalidAudienceError, "the token is for another audience (aud)"),
    (jwt.InvalidIssuerError, "the token is from another issuer (iss)"),
)


class TokenError(Exception):
    """The token cannot be used; ``status`` is 401 (no or bad token) or 403 (a good token
    that does not allow this); the message names the rule, never the token or a claim's
    value."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Scope:
    """One SMART scope: context (patient, user, system), resource type (or ``*``) and the
    permitted interactions as SMART v2 letters (c, r, u, d, s)."""

    context: str
    resource_type: str
    permissions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        found = _SCOPE.match(text)
        if found is None:
            return None
        context, rtype, perms, query = found.groups()
        if query:
            return None  # v2 granular scopes (with a query) are not understood: not granted
        if perms in _V1:
            letters = _V1[perms]
        elif re.fullmatch(r"c?r?u?d?s?", perms) and perms:
            letters = perms
        else:
            return None
        return cls(context, rtype, frozenset(letters))

    def covers(self, resource_type: str, permission: str) -> bool:
        return self.resource_type in ("*", resource_type) and permission in self.permissions


@dataclass(frozen=True)
class Caller:
    """The verified requester of one request."""

    requester: str
    scopes: tuple[Scope, ...]
    purpose: str | None
    clearance: str
    role: str | None
    patient: str | None
    admin: bool = False
    raw_scopes: tuple[str, ...] = field(default=(), repr=False)

    def allowed(self, resource_type: str, permission: str) -> bool:
        """Whether some scope grants ``permission`` (c, r, u, d, s) on ``resource_type``."""
        return any(s.covers(resource_type, permission) for s in self.scopes)

    def patient_only(self, resource_type: str, permission: str) -> bool:
        """Whether only ``patient/`` scopes grant it (the caller then sees one patient's data)."""
        granting = [s for s in self.scopes if s.covers(resource_type, permission)]
        return bool(granting) and all(s.context == "patient" for s in granting)


def _load_keys(
    algorithm: str,
    secret: bytes | None,
    public_key: bytes | None,
    jwks: dict[str, Any] | None,
) -> tuple[Any, dict[str, Any]]:
    if algorithm == "HS256":
        if secret is None or len(secret) < 32:
            raise ValueError("an HS256 secret must be at least 32 bytes")
        return secret, {}
    if algorithm != "RS256":
        raise ValueError("the token algorithm must be HS256 or RS256")
    if public_key is not None:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return load_pem_public_key(public_key), {}
    if jwks is None:
        raise ValueError("RS256 needs a public key or a JWKS file")
    by_kid: dict[str, Any] = {}
    for key in jwks.get("keys", []):
        if not isinstance(key, dict) or key.get("kty") != "RSA":
            continue
        if key.get("alg") not in (None, "RS256") or key.get("use") not in (None, "sig"):
            continue
        by_kid[str(key.get("kid", ""))] = RSAAlgorithm.from_jwk(json.dumps(key))
    if not by_kid:
        raise ValueError("the JWKS file holds no RSA signing key")
    return None, by_kid


class TokenVerifier:
    """Verifies bearer tokens with one configured key and algorithm."""

    def __init__(
        self,
        *,
        algorithm: str,
        secret: bytes | None = None,
        public_key: bytes | None = None,
        jwks: dict[str, Any] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
    ) -> None:
        self.algorithm = algorithm
        self._key, self._by_kid = _load_keys(algorithm, secret, public_key, jwks)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    @classmethod
    def from_files(
        cls,
        *,
        secret_file: Path | None = None,
        public_key_file: Path | None = None,
        jwks_file: Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> TokenVerifier:
        given = [x for x in (secret_file, public_key_file, jwks_file) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of a secret file, a public key or a JWKS file")
        if secret_file is not None:
            return cls(
                algorithm="HS256",
                secret=secret_file.read_bytes().strip(),
                audience=audience,
                issuer=issuer,
            )
        if public_key_file is not None:
            return cls(
                algorithm="RS256",
                public_key=public_key_file.read_bytes(),
                audience=audience,
                issuer=issuer,
            )
        assert jwks_file is not None
        return cls(
            algorithm="RS256",
            jwks=json.loads(jwks_file.read_text()),
            audience=audience,
            issuer=issuer,
        )

    def caller(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` header names; TokenError (401) otherwise."""
        if not authorization:
            raise TokenError("no bearer token (Authorization: Bearer ...)")
        kind, _, token = authorization.partition(" ")
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            raise TokenError("the Authorization header must be 'Bearer <token>'")
        if len(token) > _MAX_TOKEN:
            raise TokenError("the token is too long")
        return self._read(self._verify(token))

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("the token is not a JWT") from None
        if header.get("alg") != self.algorithm:
            raise TokenError(f"the token must be signed with {self.algorithm}")
        key = self._key
        if self._by_kid:
            key = self._by_kid.get(str(header.get("kid", "")))
            if key is None:
                raise TokenError("the token's kid names no key of the JWKS")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            why = next((m for kind, m in _JWT_ERRORS if isinstance(exc, kind)), None)
            raise TokenError(why or "the token's signature or claims do not verify") from None
        return claims

    def _read(self, claims: dict[str, Any]) -> Caller:
        requester = _reference(claims.get("fhirUser")) or _reference(claims.get("sub"))
        if requester is None:
            raise TokenError("the token does not name the requester as a FHIR reference (fhirUser)")
        raw = claims.get("scope", claims.get("scp", ""))
        texts = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
        texts = [t for t in texts if isinstance(t, str)]
        scopes = tuple(s for s in (Scope.parse(t) for t in texts) if s is not None)
        purpose = _one(claims.get("purpose_of_use"))
        if purpose is not None and purpose not in _PURPOSES:
            raise TokenError("purpose_of_use is not a purpose this gateway knows")
        clearance = _one(claims.get("clearance")) or "N"
        if clearance not in _CLEARANCES:
            raise TokenError("clearance must be N, R or V")
        role = _one(claims.get("role")) or _ROLE_BY_TYPE.get(requester.split("/")[0])
        if role is not None and role not in _ROLES:
            raise TokenError("role is not a role this gateway knows")
        patient = _reference(claims.get("patient"), default_type="Patient")
        if any(s.context == "patient" for s in scopes) and patient is None:
            raise TokenError("patient/ scopes need a patient claim")
        admin = ADMIN_SCOPE in texts
        return Caller(requester, scopes, purpose, clearance, role, patient, admin, tuple(texts))


def _one(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("code")
    return value if isinstance(value, str) and value else None


def _reference(value: Any, default_type: str | None = None) -> str | None:
    """``Type/id`` from a reference or a URL ending in one; None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    parts = value.rstrip("/").split("/")
    if len(parts) == 1 and default_type is not None:
        parts = [default_type, parts[0]]
    ref = "/".join(parts[-2:])
    return ref if reference_parts(ref) is not None else None
