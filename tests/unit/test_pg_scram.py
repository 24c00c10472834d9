"""SCRAM-SHA-256 (RFC 7677's test vector) on both sides, and the protocol tracker."""

from __future__ import annotations

import base64

import pytest

from stepguard.pgwire.classify import classify
from stepguard.pgwire.scram import (
    ClientExchange,
    ScramError,
    ServerExchange,
    Verifier,
    make_verifier,
)
from stepguard.pgwire.tracking import REMOVE, Expect, Tracker


def test_rfc7677_vector() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = make_verifier("pencil", salt=salt, iterations=4096)
    server = ServerExchange(verifier)
    server_first = server.first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert server_first.startswith("r=rOprNGfwEbeRWgbNEkqO") and ",s=W22ZaJ0SNY7soEsUEjb6gQ==," \
        in server_first
    nonce = server_first.split(",")[0][2:]
    client = ClientExchange("pencil")
    client.nonce = "rOprNGfwEbeRWgbNEkqO"
    client._first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(server_first)
    assert final.startswith(f"c=biws,r={nonce},p=")
    client.check(server.final(final))


def test_rfc7677_known_proof() -> None:
    """The RFC's exact exchange: the proof and server signature it lists."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = make_verifier("pencil", salt=salt)
    server = ServerExchange(verifier)
    server.first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    server._server_first = ("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                            "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = server.final("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                         "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_a_wrong_proof_and_a_round_trip_through_the_verifier_text() -> None:
    verifier = Verifier.decode(make_verifier("right").encode())
    server = ServerExchange(verifier)
    client = ClientExchange("wrong")
    server_first = server.first(client.first())
    with pytest.raises(ScramError):
        server.final(client.final(server_first))
    with pytest.raises(ScramError):
        ServerExchange(verifier).first("p=tls-server-end-point,,n=,r=abc")


def test_the_tracker_applies_only_what_the_server_confirmed() -> None:
    delete = classify("DELETE FROM t").statements[0]
    select = classify("SELECT 1").statements[0]
    tracker = Tracker()
    tracker.queue(Expect("parse", effect=("stmt", "", delete)))
    tracker.queue(Expect("sync"))
    tracker.answer(b"1")
    tracker.answer(b"Z")
    assert tracker.lookup("stmt", "") is delete
    tracker.queue(Expect("bind"))
    tracker.queue(Expect("parse", effect=("stmt", "", select)))
    tracker.queue(Expect("sync"))
    assert tracker.lookup("stmt", "") is select  # the overlay, while in flight
    tracker.error()  # the Bind failed: the Parse is skipped by the server
    tracker.answer(b"Z")
    assert tracker.lookup("stmt", "") is delete
    tracker.queue(Expect("close", effect=("stmt", "", REMOVE)))
    tracker.answer(b"3")
    assert tracker.lookup("stmt", "") is None
