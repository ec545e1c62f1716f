#!/usr/bin/env python3
"""Checks schemas/testdata/vectors.json with libsodium (PyNaCl) and zstandard,
independently of Candor's Rust code: what an agent author would write.

    pip install pynacl zstandard
    python3 schemas/testdata/check_vectors.py
"""
import hashlib
import hmac
import json
import pathlib
import struct
import sys

import zstandard
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

SALT = b"candor/hkdf/v1"


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(SALT, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def info(label: str, ids, version: int) -> bytes:
    out = label.encode() + b"\x00"
    for i in ids:
        out += bytes([len(i)]) + i.encode()
    return out + struct.pack(">I", version)


def header(v) -> bytes:
    out = b"CNDB" + bytes([1, 1]) + struct.pack(">I", v["key_version"])
    out += bytes.fromhex(v["batch_id_hex"])
    for i in (v["tenant"], v["employee"], v["device"]):
        out += bytes([len(i)]) + i.encode()
    return out


def parse(body: bytes):
    """Returns (ids, aad, nonce, sealed) or None if the envelope is malformed."""
    if len(body) < 26 or body[:4] != b"CNDB":
        return None
    pos, ids = 26, []
    for _ in range(3):
        if pos >= len(body):
            return None
        n = body[pos]
        ids.append(body[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    if len(body) < pos + 24 + 16:
        return None
    version = struct.unpack(">I", body[6:10])[0]
    return ids, version, body[: pos + 24], body[pos : pos + 24], body[pos + 24 :]


def check_log_records(r, tenant_keys) -> bool:
    """Opens the records as the layout in schemas/src/record/mod.rs says:
    clear header (magic, version, [v1: dataset tag], key version, tenant),
    nonce, XChaCha20-Poly1305 with every byte before the ciphertext as AAD;
    a version 2 payload starts with receive time, batch id, employee,
    device and its dataset sections, whose tags are checked here."""
    (keys,) = [t for t in tenant_keys if t["tenant"] == r["tenant"]]
    key = bytes.fromhex(keys["at_rest_key_hex"])
    records = [bytes.fromhex(h) for h in r["records_hex"]]
    tags = [d["tag"] for d in r["datasets"]]
    if len(records) != (1 if r["format"] == 2 else len(tags)):
        return False
    for i, rec in enumerate(records):
        if rec[:4] != b"CNDL" or rec[4] != r["format"]:
            return False
        pos = 5
        if r["format"] == 1:
            if rec[pos] != tags[i]:
                return False
            pos += 1
        if struct.unpack(">I", rec[pos : pos + 4])[0] != r["key_version"]:
            return False
        pos += 4
        tenant = rec[pos + 1 : pos + 1 + rec[pos]].decode()
        pos += 1 + rec[pos]
        nonce = rec[pos : pos + 24]
        if tenant != r["tenant"] or nonce.hex() != r["nonces_hex"][i]:
            return False
        try:
            payload = crypto_aead_xchacha20poly1305_ietf_decrypt(rec[pos + 24 :], rec[: pos + 24], nonce, key)
        except CryptoError:
            return False
        if r["format"] == 2:
            received, batch_id = struct.unpack(">q", payload[:8])[0], payload[8:24]
            at = 24
            ids = []
            for _ in range(2):
                ids.append(payload[at + 1 : at + 1 + payload[at]].decode())
                at += 1 + payload[at]
            if (received, batch_id.hex(), ids) != (r["received_at_ms"], r["batch_id_hex"], [r["employee"], r["device"]]):
                return False
            count, at = payload[at], at + 1
            seen = []
            for _ in range(count):
                tag, message, body = payload[at], *struct.unpack(">II", payload[at + 1 : at + 9])
                seen.append(tag)
                at += 9 + message
                at += -at % 8  # bodies start 8-aligned within the payload
                at += body
            if seen != tags or at != len(payload):
                return False
    return True


def main() -> int:
    path = pathlib.Path(__file__).with_name("vectors.json")
    doc = json.loads(path.read_text())
    master = bytes.fromhex(doc["master_secret_hex"])
    crypto_verdicts = {"accept", "bad_tag", "malformed_envelope", "bad_compression"}
    failures = 0
    for v in doc["vectors"]:
        name = v["name"]
        key = hkdf_sha256(master, info("candor/device-key", [v["tenant"], v["sealed_by_employee"], v["device"]], v["key_version"]))
        problems = []
        if key.hex() != v["device_key_hex"]:
            problems.append("device key differs")
        aad = header(v) + bytes.fromhex(v["nonce_hex"])
        sealed = aad + crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes.fromhex(v["payload_hex"]), aad, bytes.fromhex(v["nonce_hex"]), key
        )
        body = bytes.fromhex(v["sealed_hex"])
        tampered = sealed != body
        # What a receiver decides, up to decompression.
        parsed = parse(body)
        if parsed is None:
            verdict = "malformed_envelope"
        else:
            (tenant, employee, device), version, aad_in, nonce, ct = parsed
            k = hkdf_sha256(master, info("candor/device-key", [tenant, employee, device], version))
            try:
                frame = crypto_aead_xchacha20poly1305_ietf_decrypt(ct, aad_in, nonce, k)
                try:
                    zstandard.ZstdDecompressor().decompress(frame, max_output_size=8 << 20)
                    verdict = "accept"
                except zstandard.ZstdError:
                    verdict = "bad_compression"
            except CryptoError:
                verdict = "bad_tag"
        expect = v["expect"]
        if expect in crypto_verdicts:
            if verdict != expect:
                problems.append(f"verdict {verdict}, expected {expect}")
        elif verdict != "accept":
            problems.append(f"{expect} case should open and decompress, got {verdict}")
        if not tampered and v["plaintext_json"] and expect != "bad_compression":
            if verdict == "accept" and zstandard.ZstdDecompressor().decompress(bytes.fromhex(v["payload_hex"]), max_output_size=8 << 20).decode() != v["plaintext_json"]:
                problems.append("payload does not decompress to plaintext_json")
        status = "ok" if not problems else "FAIL: " + "; ".join(problems)
        print(f"{name:28} {'resealed' if not tampered else 'tampered'}  {status}")
        failures += bool(problems)
    for t in doc["tenant_keys"]:
        ikm = master + bytes.fromhex(t["seed_hex"])
        at_rest = hkdf_sha256(ikm, info("candor/tenant-at-rest-key", [t["tenant"]], t["version"]))
        pseudo = hkdf_sha256(ikm, info("candor/tenant-pseudonym-key", [t["tenant"]], t["version"]))
        subject = hmac.new(pseudo, t["subject_of_employee"].encode(), hashlib.sha256).hexdigest()
        ok = (at_rest.hex(), pseudo.hex(), subject) == (t["at_rest_key_hex"], t["pseudonym_key_hex"], t["subject"])
        print(f"tenant keys {t['tenant']:16} {'ok' if ok else 'FAIL'}")
        failures += not ok
    for r in doc["log_records"]:
        ok = check_log_records(r, doc["tenant_keys"])
        print(f"log records format {r['format']}          {'ok' if ok else 'FAIL'}")
        failures += not ok
    checked = len(doc["vectors"]) + len(doc["tenant_keys"]) + len(doc["log_records"])
    print(f"{checked - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
