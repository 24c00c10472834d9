"""Push approval over HTTP: only an enrolled device key can approve (issue 9 item 1).

A "device" here is what stepguard.js does in a browser, done with `cryptography`: an ECDSA P-256
key pair whose public half is enrolled behind a fresh step-up, and which signs the push id, the
server nonce, the digest of what is approved and the number picked.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.testclient import TestClient

from stepguard.web.app import create_app
from tests.integration.test_gateway import BASE, PEER, csrf, forward, sign_in
from tests.support.gateway import Clock, Seeded, make_runtime, seed_user

LAPTOP_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
PHONE_UA = "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 Chrome/126.0.0.0 Mobile Safari"
LAPTOP_IP = "198.51.100.23"
GEO = """
risk:
  locations: [{network: 198.51.100.0/24, country: DE, city: Berlin}]
"""


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@dataclass
class World:
    app: object
    clock: Clock
    alice: Seeded
    bob: Seeded

    def browser(self, ua: str = PHONE_UA, ip: str | None = None) -> TestClient:
        headers = {"User-Agent": ua, **({"X-Forwarded-For": ip} if ip else {})}
        return TestClient(
            self.app, base_url=BASE, client=PEER, follow_redirects=False, headers=headers  # type: ignore[arg-type]
        )


@pytest.fixture()
def world(tmp_path: Path, clock: Clock) -> Iterator[World]:
    runtime = make_runtime(tmp_path, clock=clock, extra=GEO)
    alice = seed_user(runtime)
    bob = seed_user(runtime, "bob", groups=("admins",))
    app = create_app(runtime)
    with TestClient(app, base_url=BASE, client=PEER):  # runs the app's lifespan
        yield World(app, clock, alice, bob)
    runtime.close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DeviceKey:
    """What stepguard.js keeps in IndexedDB: a P-256 private key and the device id."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.id = ""

    def spki(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, *fields: str) -> str:
        der = self.private.sign("\n".join(fields).encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def meta_csrf(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match
    return match.group(1)


def totp_step_up(client: TestClient, world: World, user: Seeded, location: str) -> None:
    page = client.get(location)
    answer = client.post(
        location + "/totp", data={"code": user.code(world.clock.now), "csrf_token": csrf(page.text)}
    )
    assert answer.status_code == 303, answer.text
    world.clock.advance(31)  # the next TOTP step for the next proof


def enrol(
    client: TestClient, world: World, user: Seeded, key: DeviceKey | None = None
) -> DeviceKey:
    """Step up (fresh proof), then enrol `key` like stepguard.js does."""
    key = key or DeviceKey()
    page = client.get("/account/push-device")
    if page.status_code == 303:
        totp_step_up(client, world, user, page.headers["location"].removeprefix(BASE))
        page = client.get("/account/push-device")
    assert page.status_code == 200, page.text
    headers = {"X-CSRF-Token": meta_csrf(page.text), "Origin": BASE}
    begun = client.post("/account/push-device/begin", json={}, headers=headers).json()
    signature = key.sign("stepguard-push-enrolment-v1", begun["enrolment_id"], begun["nonce"])
    finished = client.post(
        "/account/push-device/finish",
        json={"enrolment_id": begun["enrolment_id"], "alg": "ES256",
              "public_key": b64url(key.spki()), "signature": signature, "label": "My phone"},
        headers=headers,
    )
    assert finished.status_code == 200, finished.text
    key.id = finished.json()["device_id"]
    return key


def request_push(
    laptop: TestClient, path: str = "/admin/audit", method: str = "GET"
) -> tuple[str, int]:
    """The laptop needs a step-up, sends a push; the challenge URL and the number shown."""
    url = forward(laptop, path, method).headers["location"].removeprefix(BASE)
    page = laptop.get(url)
    assert "/push" in page.text, "push is not offered"
    sent = laptop.post(url + "/push", data={"csrf_token": csrf(page.text)})
    assert sent.status_code == 303, sent.text
    number = re.search(r'class="push-number">(\d+)<', laptop.get(url).text)
    assert number
    return url, int(number.group(1))


@dataclass
class Approval:
    url: str
    html: str
    push_id: str
    nonce: str
    digest: str
    options: list[int]


def approval(phone: TestClient) -> Approval:
    (url,) = re.findall(r'href="(/account/push/[\w-]+)"', phone.get("/account").text)
    html = phone.get(url).text

    def attr(name: str) -> str:
        match = re.search(rf'{name}="([^"]*)"', html)
        assert match, name
        return match.group(1)

    options = [int(v) for v in re.findall(r'name="picked" value="(\d+)"', html) if v != "0"]
    return Approval(url, html, attr("data-push-id"), attr("data-push-nonce"),
                    attr("data-push-digest"), options)


def answer(phone: TestClient, found: Approval, picked: int, *, device_id: str,
           signature: str):  # type: ignore[no-untyped-def]
    return phone.post(found.url, data={
        "picked": str(picked), "device_id": device_id, "signature": signature,
        "csrf_token": csrf(found.html),
    })


def signed(key: DeviceKey, found: Approval, picked: int) -> str:
    return key.sign("stepguard-push-approval-v1", found.push_id, found.nonce, found.digest,
                    str(picked))


def needs_step_up(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 302 and "/step-up/" in response.headers["location"]


def poll(laptop: TestClient, url: str) -> dict[str, str]:
    return laptop.get(url + "/push/status").json()  # type: ignore[no-any-return]


@pytest.fixture()
def enrolled(world: World) -> tuple[TestClient, DeviceKey, TestClient]:
    """Alice's phone holds an enrolled device; then she signs in on her laptop."""
    phone = world.browser(PHONE_UA)
    sign_in(phone, world.alice)
    key = enrol(phone, world, world.alice)
    world.clock.advance(5)
    laptop = world.browser(LAPTOP_UA, LAPTOP_IP)
    sign_in(laptop, world.alice)
    return phone, key, laptop


def test_a_password_only_second_session_cannot_approve(world: World) -> None:
    """Fails on the old code: any other session of the user could approve, reaching aal2."""
    attacker = world.browser(LAPTOP_UA)
    sign_in(attacker, world.alice)
    url = forward(attacker, "/admin/audit").headers["location"].removeprefix(BASE)
    page = attacker.get(url)
    attacker.post(url + "/push", data={"csrf_token": csrf(page.text)})
    number = re.search(r'class="push-number">(\d+)<', attacker.get(url).text)
    second = world.browser("Chrome")  # the attacker's second browser, password only
    sign_in(second, world.alice)
    for pid in re.findall(r"/account/push/([\w-]+)", second.get("/account").text):
        page = second.get(f"/account/push/{pid}")
        if number and page.status_code == 200:
            second.post(f"/account/push/{pid}",
                        data={"picked": number.group(1), "csrf_token": csrf(page.text)})
    assert "redirect" not in attacker.get(url + "/push/status").text
    assert needs_step_up(forward(attacker, "/admin/audit"))


def test_without_an_enrolled_device_push_is_not_offered(world: World) -> None:
    laptop, phone = world.browser(LAPTOP_UA), world.browser(PHONE_UA)
    sign_in(laptop, world.alice)
    sign_in(phone, world.alice)
    url = forward(laptop, "/admin/audit").headers["location"].removeprefix(BASE)
    page = laptop.get(url)
    assert f'action="{url}/push"' not in page.text
    refused = laptop.post(url + "/push", data={"csrf_token": csrf(page.text)})
    assert refused.status_code == 429 and "cannot be used" in refused.text


def test_an_enrolled_device_approves_and_sees_where_and_what(world: World, enrolled) -> None:  # type: ignore[no-untyped-def]
    phone, key, laptop = enrolled
    url, number = request_push(laptop)
    found = approval(phone)
    assert LAPTOP_IP in found.html and "Berlin, DE" in found.html
    assert "Firefox 128 on Linux" in found.html
    assert "Opening the admin console" in found.html and number in found.options
    assert poll(laptop, url) == {"status": "pending"}
    done = answer(phone, found, number, device_id=key.id, signature=signed(key, found, number))
    assert done.status_code == 303 and "Approved" in done.headers["location"]
    result = poll(laptop, url)
    assert "redirect" in result
    assert forward(laptop, "/admin/audit").status_code == 200
    # "Last used" is shown for the device on the account page.
    assert "never" not in phone.get("/account").text.split("Devices that approve")[1].split(
        "</table>")[0]


def test_a_password_only_session_cannot_approve_even_when_a_device_exists(  # type: ignore[no-untyped-def]
    world: World, enrolled
) -> None:
    phone, key, laptop = enrolled
    url, number = request_push(laptop)
    attacker = world.browser("Chrome")
    sign_in(attacker, world.alice)
    found = approval(attacker)
    forged = DeviceKey()
    for device_id, signature in [
        ("", ""),  # no device at all
        (key.id, ""),  # the real device's id, no signature
        (key.id, signed(forged, found, number)),  # signed by a key that is not enrolled
        (key.id, "%%%"),  # garbage
    ]:
        refused = answer(attacker, found, number, device_id=device_id, signature=signature)
        assert refused.status_code == 303 and "Not%20answered" in refused.headers["location"]
    assert poll(laptop, url) == {"status": "pending"}  # still open for the real device
    assert needs_step_up(forward(laptop, "/admin/audit"))


def test_a_wrong_number_denies_with_no_second_try(world: World, enrolled) -> None:  # type: ignore[no-untyped-def]
    phone, key, laptop = enrolled
    url, number = request_push(laptop)
    found = approval(phone)
    wrong = next(o for o in found.options if o != number)
    assert "Refused" in answer(phone, found, wrong, device_id=key.id,
                               signature=signed(key, found, wrong)).headers["location"]
    assert poll(laptop, url) == {"status": "denied"}
    late = answer(phone, found, number, device_id=key.id, signature=signed(key, found, number))
    assert "Not%20answered" in late.headers["location"]
    assert needs_step_up(forward(laptop, "/admin/audit"))


def test_a_replayed_signature_is_refused(world: World, enrolled) -> None:  # type: ignore[no-untyped-def]
    phone, key, laptop = enrolled
    url, number = request_push(laptop)
    first = approval(phone)
    signature = signed(key, first, number)
    assert "Approved" in answer(phone, first, number, device_id=key.id,
                                signature=signature).headers["location"]
    assert "redirect" in poll(laptop, url)
    assert "Not%20answered" in answer(phone, first, number, device_id=key.id,
                                      signature=signature).headers["location"]
    # A new push: the old signature (other push id and nonce) does not count for it.
    world.clock.advance(31)
    url2, number2 = request_push(laptop, "/transfers", "POST")  # max_age 0s: a new step-up
    second = approval(phone)
    replay = answer(phone, second, number2, device_id=key.id, signature=signature)
    assert "Not%20answered" in replay.headers["location"]
    assert poll(laptop, url2) == {"status": "pending"}


def test_another_users_device_cannot_approve(world: World, enrolled) -> None:  # type: ignore[no-untyped-def]
    phone, key, laptop = enrolled
    bobs_phone = world.browser(PHONE_UA)
    sign_in(bobs_phone, world.bob)
    bobs_key = enrol(bobs_phone, world, world.bob)
    world.clock.advance(5)
    url, number = request_push(laptop)
    found = approval(phone)
    refused = answer(phone, found, number, device_id=bobs_key.id,
                     signature=signed(bobs_key, found, number))
    assert "Not%20answered" in refused.headers["location"]
    assert bobs_phone.get("/account").text.count("/account/push/") == 0  # bob sees no push
    assert poll(laptop, url) == {"status": "pending"}


def test_a_removed_device_cannot_approve(world: World, enrolled) -> None:  # type: ignore[no-untyped-def]
    phone, key, laptop = enrolled
    url, number = request_push(laptop)
    found = approval(phone)
    account = phone.get("/account")
    removed = phone.post("/account/factors/remove",
                         data={"factor_id": key.id, "csrf_token": csrf(account.text)})
    assert removed.status_code == 303 and "Removed" in removed.headers["location"]
    refused = answer(phone, found, number, device_id=key.id, signature=signed(key, found, number))
    assert "Not%20answered" in refused.headers["location"]


def test_an_expired_push_is_refused(world: World, enrolled) -> None:  # type: ignore[no-untyped-def]
    phone, key, laptop = enrolled
    url, number = request_push(laptop)
    found = approval(phone)
    world.clock.advance(121)
    late = answer(phone, found, number, device_id=key.id, signature=signed(key, found, number))
    assert late.status_code in (303, 404)
    assert "Approved" not in late.headers.get("location", "")
    assert poll(laptop, url) == {"status": "expired"}


def test_push_bombing_is_throttled_across_challenges(world: World, enrolled) -> None:  # type: ignore[no-untyped-def]
    phone, key, laptop = enrolled
    request_push(laptop)
    url = forward(laptop, "/admin/users/bob/roles", "POST").headers["location"].removeprefix(BASE)
    page = laptop.get(url)
    again = laptop.post(url + "/push", data={"csrf_token": csrf(page.text)})
    assert again.status_code == 429 and "Too many attempts" in again.text


def test_enrolment_needs_a_fresh_step_up_and_proof_of_possession(world: World) -> None:
    phone = world.browser(PHONE_UA)
    sign_in(phone, world.alice)
    world.clock.advance(11 * 60)  # the password sign-in is no longer fresh; alice has TOTP
    page = phone.get("/account/push-device")
    assert page.status_code == 303 and "/step-up/" in page.headers["location"]
    account = phone.get("/account")
    headers = {"X-CSRF-Token": meta_csrf(account.text), "Origin": BASE}
    assert phone.post("/account/push-device/begin", json={}, headers=headers).status_code == 410
    # After the step-up: a key that did not sign the nonce is refused, and the nonce is spent.
    totp_step_up(phone, world, world.alice, page.headers["location"].removeprefix(BASE))
    page = phone.get("/account/push-device")
    headers = {"X-CSRF-Token": meta_csrf(page.text), "Origin": BASE}
    begun = phone.post("/account/push-device/begin", json={}, headers=headers).json()
    key, other = DeviceKey(), DeviceKey()
    body = {"enrolment_id": begun["enrolment_id"], "alg": "ES256",
            "public_key": b64url(key.spki()),
            "signature": other.sign("stepguard-push-enrolment-v1", begun["enrolment_id"],
                                    begun["nonce"]), "label": "x"}
    assert phone.post("/account/push-device/finish", json=body, headers=headers).status_code == 400
    body["signature"] = key.sign("stepguard-push-enrolment-v1", begun["enrolment_id"],
                                 begun["nonce"])
    assert phone.post("/account/push-device/finish", json=body, headers=headers).status_code == 400
    for junk in (b"[]", b"{", b'{"public_key": "%%"}'):
        answer_ = phone.post("/account/push-device/finish", content=junk,
                             headers={**headers, "Content-Type": "application/json"})
        assert answer_.status_code == 400
