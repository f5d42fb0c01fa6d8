"""Token making and hashing (pure: no database)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from dx.scheduler.tokens import PREFIX, TOKEN_BYTES, new_token, token_hash, well_formed

pytestmark = pytest.mark.timeout(10)


def test_a_token_carries_256_random_bits_after_its_prefix():
    # When: tokens are made
    made = [new_token() for _ in range(200)]
    # Then: each is dx_ + 32 random bytes in URL-safe base64, and no two are alike
    for token in made:
        assert token.startswith(PREFIX)
        raw = base64.urlsafe_b64decode(token[len(PREFIX):] + "=" * (-len(token) % 4))
        assert len(raw) == TOKEN_BYTES
        assert well_formed(token)
    assert len(set(made)) == len(made)


def test_the_stored_form_is_the_sha256_and_differs_for_any_change():
    # Given: a token and the same token with one character changed
    token = new_token()
    changed = token[:-1] + ("A" if token[-1] != "A" else "B")
    # When/Then: the hash is SHA-256 of the token, stable, 32 bytes, and not the token itself
    assert token_hash(token) == hashlib.sha256(token.encode()).digest() == token_hash(token)
    assert len(token_hash(token)) == 32 and token.encode() not in token_hash(token)
    assert token_hash(changed) != token_hash(token)


@pytest.mark.parametrize("junk", ["", "dx_", "Bearer dx_abc", "abc", "dx_" + "a" * 300, "dx_é" + "a" * 40])
def test_junk_is_refused_before_any_lookup(junk):
    # When/Then: strings that cannot be tokens are not well formed
    assert not well_formed(junk)
