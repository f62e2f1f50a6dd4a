"""QR signatures in the mask topology: code layout, MAC payloads, placement, exact-count embedding,
module test and decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verifier.errors import VerifierError
from verifier.masks import connectivity_map, count_kept, magnitude_mask
from verifier.models import build_model, prunable_parameters
from verifier.signatures.qr import (
    choose_placement,
    decode_window,
    embed_code,
    function_patterns,
    make_code,
    make_payload,
    module_test,
    payload_is_valid,
    read_window,
)

SECRET = b"server-secret"


def _ticket(arch: str, seed: int, density: float = 0.2):
    """A magnitude ticket of a fresh model: mask, weights with zeros where pruned, rewind weights."""
    torch.manual_seed(seed)
    model = build_model(arch, (1, 8, 8), 10)
    rewind = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = prunable_parameters(arch, model)
    mask = magnitude_mask({n: rewind[n] for n in names}, dict.fromkeys(names, density))
    state = {k: v * mask[k] if k in mask else v.clone() for k, v in rewind.items()}
    return mask, state, rewind


@pytest.fixture(scope="module")
def code():
    return make_code(make_payload(SECRET, "owner-1", "ticket-1"))


def test_data_modules_match_the_standard_for_versions_1_to_6():
    expected = {1: 208, 2: 359, 3: 567, 4: 807, 5: 1079, 6: 1383}  # ISO/IEC 18004 data + remainder bits
    assert {v: int((~function_patterns(v)).sum()) for v in expected} == expected
    with pytest.raises(VerifierError, match="version"):
        function_patterns(7)


def test_code_is_version_3_h_and_function_patterns_are_shared_by_all_codes(code):
    assert code.size == 29 and code.version == 3 and code.error == "H"
    others = [make_code(make_payload(SECRET, "o", str(i))) for i in range(12)]
    fixed = function_patterns(3)
    fixed[8, :] = fixed[:, 8] = False  # format information depends on the data mask chosen
    assert all(np.array_equal(other.dark[fixed], code.dark[fixed]) for other in others)
    assert len({other.dark[~function_patterns(3)].tobytes() for other in others}) == 12


def test_payload_is_a_mac_of_owner_and_ticket():
    payload = make_payload(SECRET, "owner-1", "ticket-1")
    assert payload.startswith("TG1:") and len(payload) == 28
    assert payload_is_valid(SECRET, "owner-1", "ticket-1", payload)
    assert not payload_is_valid(SECRET, "owner-1", "ticket-2", payload)
    assert not payload_is_valid(SECRET, "owner-2", "ticket-1", payload)
    assert not payload_is_valid(b"another secret", "owner-1", "ticket-1", payload)
    forged = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    assert not payload_is_valid(SECRET, "owner-1", "ticket-1", forged)


def test_bad_code_settings_are_refused():
    with pytest.raises(VerifierError, match="error level"):
        make_code("x", error="Z")
    with pytest.raises(VerifierError, match="does not fit"):
        make_code("x" * 200, version=1, error="H")


def test_placement_is_the_best_matching_offset(code):
    mask, _, _ = _ticket("resnet20", 0)
    placement = choose_placement(mask, code)
    best = 0
    for keep in mask.values():
        full = connectivity_map(keep).numpy()
        if min(full.shape) < code.size:
            continue
        for r in range(full.shape[0] - code.size + 1):
            for c in range(full.shape[1] - code.size + 1):
                window = full[r:r + code.size, c:c + code.size]
                best = max(best, int(((window == code.connected) & code.data).sum()))
    assert placement.matched == best
    window = read_window(mask, code, placement)
    assert int(((window == code.connected) & code.data).sum()) == best


@pytest.mark.parametrize("keep_function_patterns", [True, False])
def test_embedding_writes_the_code_and_keeps_the_exact_count(code, keep_function_patterns):
    mask, state, rewind = _ticket("resnet20", 0)
    placement = choose_placement(mask, code)
    result = embed_code(mask, state, rewind, code, placement, keep_function_patterns=keep_function_patterns)
    assert count_kept(result.mask) == count_kept(mask)
    window = read_window(result.mask, code, placement)
    assert bool(((window == code.connected) | ~code.data).all())  # every data module as the code says
    before = read_window(mask, code, placement)
    fixed = ~code.data
    if keep_function_patterns:
        assert np.array_equal(window[fixed], before[fixed])
    else:
        assert np.array_equal(window, code.connected)
    assert result.kernels_removed > 0 and result.kernels_connected > 0
    for name, keep in result.mask.items():
        assert bool((result.state[name][~keep] == 0).all())
        revived = keep & ~mask[name]
        assert torch.equal(result.state[name][revived], rewind[name][revived])
    assert decode_window(window, code) == code.payload


def test_embedding_in_a_linear_layer(code):
    mask, state, rewind = _ticket("lenet300_100", 3, density=0.1)
    placement = choose_placement(mask, code)
    assert placement.layer in ("fc1.weight", "fc2.weight")
    result = embed_code(mask, state, rewind, code, placement)
    assert count_kept(result.mask) == count_kept(mask)
    assert decode_window(read_window(result.mask, code, placement), code) == code.payload


def test_module_test_separates_a_signed_ticket_from_an_independent_one(code):
    mask, state, rewind = _ticket("resnet20", 0)
    placement = choose_placement(mask, code)
    signed = embed_code(mask, state, rewind, code, placement).mask
    own = module_test(signed, code, placement, permutations=999)
    assert own.matched == own.data_modules == 567 and own.z > 10
    assert own.p_value == 1 / 1000  # never past the permutations' resolution, however large z is
    independent, _, _ = _ticket("resnet20", 1)
    other = module_test(independent, code, placement, permutations=999)
    assert other.p_value > 0.01 and other.agreement < 0.6
    assert decode_window(read_window(independent, code, placement), code) is None


def test_decoding_survives_scattered_damage_and_the_module_test_sees_through_more(code):
    mask, state, rewind = _ticket("resnet20", 0)
    placement = choose_placement(mask, code)
    window = read_window(embed_code(mask, state, rewind, code, placement).mask, code, placement)
    rng = np.random.default_rng(0)
    data = np.argwhere(code.data)
    light = window.copy()
    for i, j in data[rng.choice(len(data), size=len(data) // 50, replace=False)]:
        light[i, j] = ~light[i, j]
    assert decode_window(light, code) == code.payload  # level H absorbs 2 % scattered flips
    heavy = window.copy()
    for i, j in data[rng.choice(len(data), size=len(data) // 4, replace=False)]:
        heavy[i, j] = ~heavy[i, j]
    assert decode_window(heavy, code) is None  # 25 % scattered flips defeat the decoder ...
    assert int(((heavy == code.connected) & code.data).sum()) == 567 - 567 // 4  # ... not the count


def test_no_eligible_layer_and_missing_layer_are_clear_errors(code):
    with pytest.raises(VerifierError, match="no prunable layer"):
        choose_placement({"small.weight": torch.ones(16, 16, 3, 3, dtype=torch.bool)}, code)
    mask, _, _ = _ticket("resnet20", 0)
    placement = choose_placement(mask, code)
    with pytest.raises(VerifierError, match="has no layer"):
        read_window({"other.weight": mask[placement.layer]}, code, placement)


def _read_png(data: bytes) -> np.ndarray:
    """A strict little PNG reader for 8-bit gray/RGB images without filters: checks signature and CRCs."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and colour in (0, 2) and b"IEND" in chunks
    channels = 3 if colour == 2 else 1
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(height, 1 + width * channels)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(height, width, channels).squeeze()


def test_evidence_images_are_valid_pngs_that_show_the_code(code):
    import zxingcpp

    from verifier.signatures.images import difference_png, expected_png, window_png

    expected = _read_png(expected_png(code, scale=4))
    assert expected.shape == ((29 + 8) * 4,) * 2
    assert zxingcpp.read_barcodes(expected)[0].text == code.payload
    mask, _, _ = _ticket("resnet20", 1)
    window = read_window(mask, code, choose_placement(mask, code))
    assert _read_png(window_png(window, code)).ndim == 2
    difference = _read_png(difference_png(window, code, scale=2))
    assert difference.shape == ((29 + 8) * 2, (29 + 8) * 2, 3)
    wrong = (window != code.connected) & code.data
    assert len(np.unique(difference.reshape(-1, 3), axis=0)) >= 4 and wrong.any()


def test_whitening_hides_the_code_and_its_key_reveals_it(code):
    from verifier.signatures.qr import whiten

    key = b"k" * 32
    written = whiten(code, key)
    assert np.array_equal(whiten(written, key).dark, code.dark)  # its own inverse
    assert np.array_equal(written.dark[~code.data], code.dark[~code.data])  # function patterns untouched
    assert 0.4 < float((written.dark != code.dark)[code.data].mean()) < 0.6
    assert not np.array_equal(whiten(code, b"other key").dark, written.dark)
    mask, state, rewind = _ticket("resnet20", 0)
    placement = choose_placement(mask, written)
    raw = read_window(embed_code(mask, state, rewind, written, placement).mask, code, placement)
    assert decode_window(raw, code) is None  # a thief trying every offset finds nothing
    assert decode_window(raw ^ (written.dark ^ code.dark), code) == code.payload
