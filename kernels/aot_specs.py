"""The production configurations of the Triton kernels, compiled ahead of time.

`SPECS` maps each kernel module (`kernels/<op>.py`) to its `AotSpec`s, one per production
configuration worth reporting: block sizes, warps and stages as its launcher picks them, the
argument types and alignments the JIT would see at a production shape, and that shape's
bytes and operations (contract in `kernels.aot`). `flexicodec_fast.static_profile` compiles
them all for sm_80 and sm_90; tests/test_aot.py checks the results.
"""

from __future__ import annotations

import torch

from . import attention, bsq, fsq, interleave, merge, rvq, snake, unmerge
from ._triton import triton
from .aot import AotSpec

# ----------------------------------------------------------------------------- merge


def _merge() -> list[AotSpec]:
    # Production shape: a batch of eight one-hour items at 12.5 Hz (T = 45 000 frames), 512
    # semantic channels, fp32; an average of 1.5 frames a group (about 8 Hz), G = 30 000.
    B, T, D, G = 8, 45000, 512, 30000

    def means_spec(dtype: str, size: int) -> AotSpec:
        return AotSpec(
            name=f"merge_means {dtype}",
            kernel=merge._group_means_kernel,
            signature={
                "x_ptr": f"*{dtype}",
                "gstart_ptr": "*i64",
                "tlen_ptr": "*i64",
                "ngroups_ptr": "*i64",
                "out_ptr": f"*{dtype}",
                "stride_xb": "i64",
                "stride_xt": "i64",
                "stride_gsb": "i64",
                "stride_lb": "i64",
                "stride_ob": "i64",
                "stride_og": "i64",
                "G": "i32",
                "D": "i32",
            },
            constexprs={"BLOCK_G": merge.MEANS_BLOCK_G, "BLOCK_D": merge.MEANS_BLOCK_D},
            aligned=(
                "x_ptr",
                "gstart_ptr",
                "tlen_ptr",
                "ngroups_ptr",
                "out_ptr",
                "stride_xb",
                "stride_xt",
                "stride_gsb",
                "stride_lb",
                "stride_ob",
                "stride_og",
                "G",
                "D",
            ),
            num_warps=merge.NUM_WARPS,
            shape=f"x [{B},{T},{D}] {dtype} -> [{B},{T},{D}] (G = {G} live)",
            bytes=B * T * D * size * 2 + B * G * 16,
            flops=B * T * D + B * G * D,
            expect_ldg128=True,
        )

    return [
        AotSpec(
            name="merge_cosine fp32",
            kernel=merge._adjacent_cosine_kernel,
            signature={
                "h_ptr": "*fp32",
                "len_ptr": "*i64",
                "sim_ptr": "*fp32",
                "stride_hb": "i64",
                "stride_ht": "i64",
                "stride_sb": "i64",
                "T": "i32",
                "D": "i32",
            },
            constexprs={"BLOCK_T": merge.COSINE_BLOCK_T, "BLOCK_D": merge.COSINE_BLOCK_D},
            aligned=("h_ptr", "len_ptr", "sim_ptr", "stride_hb", "stride_ht", "D"),
            num_warps=merge.NUM_WARPS,
            shape=f"h [{B},{T},{D}] fp32",
            # h read once (the second pass and the shifted row hit the cache), s written once.
            bytes=B * T * D * 4 + B * (T - 1) * 4,
            # two squares, two divisions, a product and three adds per element of each pair
            flops=B * (T - 1) * D * 10,
            expect_ldg128=True,
        ),
        AotSpec(
            name="merge_scan",
            kernel=merge._segment_scan_kernel,
            signature={
                "sim_ptr": "*fp32",
                "len_ptr": "*i64",
                "gid_ptr": "*i64",
                "tlen_ptr": "*i64",
                "gstart_ptr": "*i64",
                "ngroups_ptr": "*i64",
                "stride_sb": "i64",
                "stride_ib": "i64",
                "stride_lb": "i64",
                "stride_gsb": "i64",
                "T": "i32",
                "threshold": "fp32",
                "max_tokens": "i32",
            },
            constexprs={"HAS_MAX": True, "BLOCK_T": merge.SCAN_BLOCK_T},
            aligned=(
                "sim_ptr",
                "len_ptr",
                "gid_ptr",
                "tlen_ptr",
                "gstart_ptr",
                "ngroups_ptr",
                "stride_ib",
                "stride_lb",
                "stride_gsb",
            ),
            num_warps=merge.NUM_WARPS,
            shape=f"sim [{B},{T - 1}] -> ids, lengths, starts [{B},{T}] int64",
            bytes=B * T * (4 + 3 * 8),
            flops=B * T * 20,
        ),
        means_spec("fp32", 4),
        means_spec("bf16", 2),
        AotSpec(
            name="merge_means_bwd fp32",
            kernel=merge._group_means_bwd_kernel,
            signature={
                "grad_ptr": "*fp32",
                "gid_ptr": "*i64",
                "tlen_ptr": "*i64",
                "gx_ptr": "*fp32",
                "stride_gb": "i64",
                "stride_gg": "i64",
                "stride_ib": "i64",
                "stride_lb": "i64",
                "stride_xb": "i64",
                "stride_xt": "i64",
                "T": "i32",
                "D": "i32",
            },
            constexprs={"BLOCK_T": merge.MEANS_BLOCK_G, "BLOCK_D": merge.MEANS_BLOCK_D},
            aligned=(
                "grad_ptr",
                "gid_ptr",
                "tlen_ptr",
                "gx_ptr",
                "stride_gb",
                "stride_gg",
                "stride_ib",
                "stride_lb",
                "stride_xb",
                "stride_xt",
                "T",
                "D",
            ),
            num_warps=merge.NUM_WARPS,
            shape=f"grad [{B},{T},{D}] fp32 (G = {G} live) -> [{B},{T},{D}]",
            bytes=B * G * D * 4 + B * T * D * 4 + B * T * 16,
            flops=B * T * D,
            expect_ldg128=True,
        ),
    ]


# ----------------------------------------------------------------------------- interleave


def _interleave() -> list[AotSpec]:
    # Production shape: eight one-hour items, T = 45 000 frames, D = 512, fp32, G = 30 000 live
    # groups out of a worst-case-sized G = T (the sequence is [B, 2T, D]).
    B, T, D, G = 8, 45000, 512, 30000
    IDX = B * T * 8 * 2  # group ids, read twice (the shifted read hits the cache)

    def interleave_spec(dtype: str, size: int) -> AotSpec:
        return AotSpec(
            name=f"interleave {dtype}",
            kernel=interleave._interleave_kernel,
            signature={
                "x_ptr": f"*{dtype}",
                "means_ptr": f"*{dtype}",
                "emb_ptr": "*fp32",
                "gid_ptr": "*i64",
                "len_ptr": "*i64",
                "ngroups_ptr": "*i64",
                "out_ptr": f"*{dtype}",
                "stride_xb": "i64",
                "stride_xt": "i64",
                "stride_mb": "i64",
                "stride_mg": "i64",
                "stride_ib": "i64",
                "stride_ob": "i64",
                "stride_op": "i64",
                "T": "i32",
                "G": "i32",
                "D": "i32",
            },
            constexprs={
                "HAS_FRAMES": True,
                "HAS_EMB": True,
                "BLOCK_T": interleave.BLOCK_T,
                "BLOCK_D": interleave.BLOCK_D,
            },
            aligned=(
                "x_ptr",
                "means_ptr",
                "emb_ptr",
                "gid_ptr",
                "len_ptr",
                "ngroups_ptr",
                "out_ptr",
                "stride_xb",
                "stride_xt",
                "stride_mb",
                "stride_mg",
                "stride_ib",
                "stride_ob",
                "stride_op",
                "D",
            ),
            num_warps=interleave.NUM_WARPS,
            shape=f"x [{B},{T},{D}] + means ({G} live groups) -> [{B},{2 * T},{D}] {dtype}",
            bytes=(B * T * D + B * G * D + 2 * B * T * D) * size + IDX,
            flops=B * G * D,
            expect_ldg128=True,
        )

    return [
        interleave_spec("fp32", 4),
        interleave_spec("bf16", 2),
        AotSpec(
            name="retrieve / interleave_bwd fp32",
            kernel=interleave._deinterleave_kernel,
            signature={
                "y_ptr": "*fp32",
                "gid_ptr": "*i64",
                "ngroups_ptr": "*i64",
                "xg_ptr": "*fp32",
                "q_ptr": "*fp32",
                "stride_yb": "i64",
                "stride_yp": "i64",
                "stride_ib": "i64",
                "stride_xb": "i64",
                "stride_xt": "i64",
                "stride_qb": "i64",
                "stride_qg": "i64",
                "T": "i32",
                "G": "i32",
                "D": "i32",
            },
            constexprs={
                "HAS_FRAMES": True,
                "BLOCK_T": interleave.BLOCK_T,
                "BLOCK_D": interleave.BLOCK_D,
            },
            aligned=(
                "y_ptr",
                "gid_ptr",
                "ngroups_ptr",
                "xg_ptr",
                "q_ptr",
                "stride_yb",
                "stride_yp",
                "stride_ib",
                "stride_xb",
                "stride_xt",
                "stride_qb",
                "stride_qg",
                "D",
            ),
            num_warps=interleave.NUM_WARPS,
            shape=f"grad [{B},{2 * T},{D}] -> frames [{B},{T},{D}] + queries [{B},{T},{D}] fp32",
            bytes=(B * (T + G) * D + 2 * B * T * D) * 4 + IDX,
            flops=0,
            expect_ldg128=True,
        ),
    ]


# ----------------------------------------------------------------------------- attention


def _attention() -> list[AotSpec]:
    # Production shape: the bottleneck transformer (8 heads of 64, full attention) on a batch of
    # eight ~80 s clips at 12.5 Hz, L = 1024 (aggregators run the same kernel on T + G positions;
    # the windowed variant is the paper's local attention, w = 16).
    B, H, L, DH = 8, 8, 1024, 64
    STRIDES = (
        "stride_qb",
        "stride_qh",
        "stride_ql",
        "stride_kb",
        "stride_kh",
        "stride_kl",
        "stride_vb",
        "stride_vh",
        "stride_vl",
        "stride_tl",
        "stride_ob",
        "stride_ol",
    )

    def spec(dtype: str, precision: str = "ieee", window: int | None = None) -> AotSpec:
        torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        size = torch_dtype.itemsize
        block_m, block_n, num_warps = attention.launch_config(
            attention.tile_width(DH), torch_dtype, precision
        )
        # Keys each query visits: all of them, or the blocks its band touches.
        keys = L if window is None else min(L, 2 * window + block_m + block_n)
        tensor_cores = dtype != "fp32" or precision == "tf32"
        pattern = "full" if window is None else f"window {window}"
        return AotSpec(
            name=f"attention {dtype}{' ' + precision if dtype == 'fp32' else ''} {pattern}",
            kernel=attention._attention_kernel,
            signature={
                "q_ptr": f"*{dtype}",
                "k_ptr": f"*{dtype}",
                "v_ptr": f"*{dtype}",
                "cos_ptr": "*fp32",
                "sin_ptr": "*fp32",
                "len_ptr": "*i64",
                "o_ptr": f"*{dtype}",
                **{s: "i32" for s in STRIDES},
                "H": "i32",
                "L": "i32",
                "before": "i32",
                "after": "i32",
                "qk_scale": "fp32",
            },
            constexprs={
                "HEAD_DIM": DH,
                "BLOCK_D": attention.tile_width(DH),
                "BLOCK_M": block_m,
                "BLOCK_N": block_n,
                "BANDED": window is not None,
                "INPUT_PRECISION": precision,
            },
            aligned=(
                "q_ptr",
                "k_ptr",
                "v_ptr",
                "cos_ptr",
                "sin_ptr",
                "len_ptr",
                "o_ptr",
                *STRIDES,
                "L",
            ),
            num_warps=num_warps,
            num_stages=attention.NUM_STAGES,
            shape=f"q, k, v [{B},{H},{L},{DH}] {dtype}, {pattern}",
            bytes=4 * B * H * L * DH * size + L * DH * 4 + 8 * B,
            flops=4 * B * H * L * keys * DH,
            peak="fp32" if not tensor_cores else ("tf32" if dtype == "fp32" else "tensor16"),
            expect_ldg128=True,
            expect_mma=tensor_cores,
        )

    return [
        spec("fp16"),
        spec("bf16"),
        spec("fp16", window=16),
        spec("fp32", "ieee"),
        spec("fp32", "tf32"),
    ]


# ----------------------------------------------------------------------------- fsq


def _fsq() -> list[AotSpec]:
    # Production shape: the semantic tokens of eight one-hour items (G = 30 000 groups at about
    # 8 Hz), dim 768, levels [8, 8, 8, 8, 8] (NP = 8 columns), fp32.
    B, G, DIM, N = 8, 30000, 768, 5
    TOKENS = B * G

    def fsq_spec(dtype: str, size: int) -> AotSpec:
        return AotSpec(
            name=f"fsq {dtype}",
            kernel=fsq._fsq_kernel,
            signature={
                "x_ptr": f"*{dtype}",
                "w_in_ptr": f"*{dtype}",
                "b_in_ptr": f"*{dtype}",
                "w_out_ptr": f"*{dtype}",
                "b_out_ptr": f"*{dtype}",
                "ftab_ptr": "*fp32",
                "out_ptr": f"*{dtype}",
                "codes_ptr": "*i32",
                "stride_xb": "i64",
                "stride_xg": "i64",
                "stride_wi": "i64",
                "stride_wo": "i32",
                "stride_ob": "i64",
                "stride_og": "i64",
                "stride_cb": "i64",
                "G": "i32",
                "DIM": "i32",
                "N": "i32",
            },
            constexprs={
                "NP": 8,
                "BLOCK_G": fsq.BLOCK_G,
                "BLOCK_K": fsq.BLOCK_K,
                "BLOCK_D": fsq.BLOCK_D,
            },
            aligned=(
                "x_ptr",
                "w_in_ptr",
                "b_in_ptr",
                "w_out_ptr",
                "b_out_ptr",
                "ftab_ptr",
                "out_ptr",
                "codes_ptr",
                "stride_xb",
                "stride_xg",
                "stride_wi",
                "stride_ob",
                "stride_og",
                "stride_cb",
                "DIM",
            ),
            num_warps=fsq.NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"x [{B},{G},{DIM}] {dtype}, levels [8]*5",
            bytes=TOKENS * (2 * DIM * size + 4) + 2 * DIM * N * size,
            # project-in and project-out multiply-adds, plus ~30 ops per level for the bound
            flops=TOKENS * (2 * 2 * DIM * N + 30 * N),
        )

    return [
        fsq_spec("fp32", 4),
        fsq_spec("bf16", 2),
        AotSpec(
            name="fsq_decode fp32",
            kernel=fsq._fsq_decode_kernel,
            signature={
                "codes_ptr": "*i32",
                "w_out_ptr": "*fp32",
                "b_out_ptr": "*fp32",
                "itab_ptr": "*i64",
                "out_ptr": "*fp32",
                "stride_cb": "i64",
                "stride_wo": "i32",
                "stride_ob": "i64",
                "stride_og": "i64",
                "G": "i32",
                "DIM": "i32",
                "N": "i32",
            },
            constexprs={"NP": 8, "BLOCK_G": fsq.BLOCK_G, "BLOCK_D": fsq.BLOCK_D},
            aligned=(
                "codes_ptr",
                "w_out_ptr",
                "b_out_ptr",
                "itab_ptr",
                "out_ptr",
                "stride_cb",
                "stride_ob",
                "stride_og",
                "DIM",
            ),
            num_warps=fsq.NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"codes [{B},{G}] int32 -> [{B},{G},{DIM}] fp32, levels [8]*5",
            bytes=TOKENS * (DIM * 4 + 4) + DIM * (N + 1) * 4,
            flops=TOKENS * (2 * DIM * N + 10 * N),
        ),
    ]


# ----------------------------------------------------------------------------- bsq


def _bsq() -> list[AotSpec]:
    # Production shape: FlexiCodec's semantic tokens with BSQ in place of FSQ, eight one-hour
    # items (G = 30 000 groups at about 8 Hz), dim 768, FocalCodec's L = 13 bits (NP = 16), fp32.
    B, G, DIM, L, NP = 8, 30000, 768, 13, 16
    TOKENS = B * G

    def bsq_spec(dtype: str, size: int) -> AotSpec:
        return AotSpec(
            name=f"bsq {dtype}",
            kernel=bsq._bsq_kernel,
            signature={
                "x_ptr": f"*{dtype}",
                "w_in_ptr": f"*{dtype}",
                "b_in_ptr": f"*{dtype}",
                "w_out_ptr": f"*{dtype}",
                "b_out_ptr": f"*{dtype}",
                "out_ptr": f"*{dtype}",
                "codes_ptr": "*i32",
                "stride_xb": "i64",
                "stride_xg": "i64",
                "stride_wi": "i64",
                "stride_wo": "i32",
                "stride_ob": "i64",
                "stride_og": "i64",
                "stride_cb": "i64",
                "G": "i32",
                "DIM": "i32",
                "N": "i32",
                "scale": "fp32",
            },
            constexprs={
                "NP": NP,
                "BLOCK_G": bsq.BLOCK_G,
                "BLOCK_K": bsq._block_k(NP),
                "BLOCK_D": bsq.BLOCK_D,
            },
            aligned=(
                "x_ptr",
                "w_in_ptr",
                "b_in_ptr",
                "w_out_ptr",
                "b_out_ptr",
                "out_ptr",
                "codes_ptr",
                "stride_xb",
                "stride_xg",
                "stride_wi",
                "stride_ob",
                "stride_og",
                "stride_cb",
                "DIM",
            ),
            num_warps=bsq.NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"x [{B},{G},{DIM}] {dtype}, L = {L} bits",
            bytes=TOKENS * (2 * DIM * size + 4) + 2 * DIM * L * size,
            # project-in and project-out multiply-adds, plus ~4 ops per bit for sign and index
            flops=TOKENS * (2 * 2 * DIM * L + 4 * L),
        )

    return [
        bsq_spec("fp32", 4),
        bsq_spec("bf16", 2),
        AotSpec(
            name="bsq_decode fp32",
            kernel=bsq._bsq_decode_kernel,
            signature={
                "codes_ptr": "*i32",
                "w_out_ptr": "*fp32",
                "b_out_ptr": "*fp32",
                "out_ptr": "*fp32",
                "stride_cb": "i64",
                "stride_wo": "i32",
                "stride_ob": "i64",
                "stride_og": "i64",
                "G": "i32",
                "DIM": "i32",
                "N": "i32",
                "scale": "fp32",
            },
            constexprs={"NP": NP, "BLOCK_G": bsq.BLOCK_G, "BLOCK_D": bsq.BLOCK_D},
            aligned=(
                "codes_ptr",
                "w_out_ptr",
                "b_out_ptr",
                "out_ptr",
                "stride_cb",
                "stride_ob",
                "stride_og",
                "DIM",
            ),
            num_warps=bsq.NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"codes [{B},{G}] int32 -> [{B},{G},{DIM}] fp32, L = {L} bits",
            bytes=TOKENS * (DIM * 4 + 4) + DIM * (L + 1) * 4,
            flops=TOKENS * (2 * DIM * L + 3 * L),
        ),
    ]


# ----------------------------------------------------------------------------- rvq


def _rvq() -> list[AotSpec]:
    # Production shape: the acoustic tokens of eight one-hour items (G = 30 000 at about 8 Hz),
    # D = 512, 24 stages of K = 4096 codes of dimension 8, fp32.
    B, G, D, S, K, CD = 8, 30000, 512, 24, 4096, 8
    TOKENS = B * G
    WEIGHTS = S * (2 * CD * D + CD + 2 * K * CD + D) * 4

    SIGNATURE_STAGES = {
        "stride_cs": "i64",
        "stride_ck": "i32",
        "stride_ows": "i64",
        "stride_owd": "i32",
        "stride_obs": "i32",
    }

    def encode_spec(assigned: bool) -> AotSpec:
        """The encode at the production shape; `assigned`: stage 0 takes given (semantic) codes,
        so one codebook scan fewer per token."""
        searched = S - 1 if assigned else S
        return AotSpec(
            name=f"rvq_encode fp32 (24 stages{', assigned first' if assigned else ''})",
            kernel=rvq._rvq_encode_kernel,
            signature={
                "x_ptr": "*fp32",
                "in_w_ptr": "*fp32",
                "in_b_ptr": "*fp32",
                "cb_ptr": "*fp32",
                "cbn_ptr": "*fp32",
                "out_w_ptr": "*fp32",
                "out_b_ptr": "*fp32",
                "ngroups_ptr": "*i64",
                "first_ptr": "*i64",
                "codes_ptr": "*i64",
                "q_ptr": "*fp32",
                "stride_xb": "i64",
                "stride_xg": "i64",
                "stride_fb": "i64",
                "stride_iws": "i64",
                "stride_iwc": "i32",
                "stride_ibs": "i32",
                "stride_ns": "i64",
                "stride_nk": "i32",
                "stride_kb": "i64",
                "stride_ks": "i64",
                "stride_qb": "i64",
                "stride_qg": "i64",
                "G": "i32",
                "D": "i32",
                "K": "i32",
                "n_stages": "i32",
                **SIGNATURE_STAGES,
            },
            constexprs={
                "CD": CD,
                "HAS_NGROUPS": True,
                "HAS_FIRST": assigned,
                "BLOCK_G": rvq.BLOCK_G,
                "BLOCK_D": 512,
                "BLOCK_C": 8,
                "BLOCK_K": rvq.BLOCK_K,
            },
            aligned=(
                "x_ptr",
                "in_w_ptr",
                "in_b_ptr",
                "cb_ptr",
                "cbn_ptr",
                "out_w_ptr",
                "out_b_ptr",
                "ngroups_ptr",
                "first_ptr",
                "codes_ptr",
                "q_ptr",
                "stride_xb",
                "stride_xg",
                "stride_fb",
                "stride_iws",
                "stride_iwc",
                "stride_ibs",
                "stride_cs",
                "stride_ns",
                "stride_ows",
                "stride_obs",
                "stride_kb",
                "stride_ks",
                "stride_qb",
                "stride_qg",
                "D",
                "K",
            ),
            num_warps=rvq.NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"x [{B},{G},{D}] fp32, {S} stages x K={K} x {CD}"
            + (", stage 0 assigned" if assigned else ""),
            bytes=TOKENS * (2 * D * 4 + S * 8 + (8 if assigned else 0)) + WEIGHTS,
            # per token and stage: in-proj and out-proj (multiply-adds x2); per searched stage:
            # codebook scores and ~4 ops per code for the distance and the running argmin
            flops=TOKENS
            * (S * (2 * D * CD + 2 * CD * D + 2 * D) + searched * (2 * K * CD + 4 * K)),
        )

    return [
        encode_spec(assigned=False),
        encode_spec(assigned=True),
        AotSpec(
            name="rvq_decode fp32 (24 stages)",
            kernel=rvq._rvq_decode_kernel,
            signature={
                "codes_ptr": "*i64",
                "cb_ptr": "*fp32",
                "out_w_ptr": "*fp32",
                "out_b_ptr": "*fp32",
                "q_ptr": "*fp32",
                "stride_kb": "i64",
                "stride_ks": "i64",
                "stride_qb": "i64",
                "stride_qg": "i64",
                "G": "i32",
                "D": "i32",
                "K": "i32",
                "n_codes": "i32",
                **SIGNATURE_STAGES,
            },
            constexprs={"CD": CD, "BLOCK_G": rvq.BLOCK_G, "BLOCK_D": 512, "BLOCK_C": 8},
            aligned=(
                "codes_ptr",
                "cb_ptr",
                "out_w_ptr",
                "out_b_ptr",
                "q_ptr",
                "stride_kb",
                "stride_ks",
                "stride_cs",
                "stride_ows",
                "stride_obs",
                "stride_qb",
                "stride_qg",
                "D",
                "K",
            ),
            num_warps=rvq.DECODE_NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"codes [{B},{S},{G}] int64 -> [{B},{G},{D}] fp32",
            bytes=TOKENS * (S * 8 + D * 4) + S * (K * CD + D * CD + D) * 4,
            flops=TOKENS * S * (2 * CD * D + 2 * D),
        ),
    ]


# ----------------------------------------------------------------------------- unmerge


def _unmerge() -> list[AotSpec]:
    # Production shape: a batch of eight 60 s clips at 12.5 Hz (T = 750) merged to ~8 Hz.
    B, G, T, D = 8, 480, 750, 512

    def spec(dtype: str, size: int) -> AotSpec:
        return AotSpec(
            name=f"unmerge {dtype}",
            kernel=unmerge._unmerge_kernel,
            signature={
                "sem_ptr": f"*{dtype}",
                "ac_ptr": f"*{dtype}",
                "ends_ptr": "*i64",
                "out_ptr": f"*{dtype}",
                "stride_sb": "i32",
                "stride_sg": "i32",
                "stride_ab": "i32",
                "stride_ag": "i32",
                "stride_eb": "i32",
                "stride_ob": "i32",
                "stride_ot": "i32",
                "G": "i32",
                "T": "i32",
                "D": "i32",
                "search_steps": "i32",
            },
            constexprs={"HAS_AC": True, "BLOCK_T": unmerge.BLOCK_T, "BLOCK_D": unmerge.BLOCK_D},
            aligned=(
                "sem_ptr",
                "ac_ptr",
                "ends_ptr",
                "out_ptr",
                "stride_sb",
                "stride_sg",
                "stride_ab",
                "stride_ag",
                "stride_eb",
                "stride_ob",
                "stride_ot",
                "G",
                "D",
            ),
            num_warps=unmerge.NUM_WARPS,
            shape=f"sem, ac [{B},{G},{D}] -> [{B},{T},{D}] {dtype}",
            bytes=2 * B * G * D * size + B * G * 8 + B * T * D * size,
            flops=B * T * D,
            expect_ldg128=True,
        )

    return [spec("fp32", 4), spec("bf16", 2)]


# ----------------------------------------------------------------------------- snake


def _snake() -> list[AotSpec]:
    # Production shape: the 96-channel stage of the DAC decoder for a batch of eight 60 s clips
    # (T = 750 frames -> N = 16 * 5 * 4 * T - 4 = 239996, rounded to an aligned 240000).
    B, C, N = 8, 96, 240000
    ELEMS = B * C * N
    SIN_COST = 1  # sin/cos counted as one operation each: the op is memory-bound by far

    def fwd_spec(dtype: str, size: int) -> AotSpec:
        return AotSpec(
            name=f"snake_fwd {dtype}",
            kernel=snake._snake_fwd_kernel,
            signature={
                "x_ptr": f"*{dtype}",
                "alpha_ptr": f"*{dtype}",
                "y_ptr": f"*{dtype}",
                "stride_xb": "i64",
                "stride_xc": "i64",
                "stride_yb": "i64",
                "stride_yc": "i64",
                "C": "i32",
                "N": "i32",
                "num_blocks": "i32",
            },
            constexprs={"stride_ac": 1, "BLOCK_N": snake.BLOCK_N},
            aligned=(
                "x_ptr",
                "alpha_ptr",
                "y_ptr",
                "stride_xb",
                "stride_xc",
                "stride_yb",
                "stride_yc",
                "C",
                "N",
            ),
            num_warps=snake.NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"x [{B},{C},{N}] {dtype}",
            bytes=2 * ELEMS * size + C * size,
            flops=ELEMS * (4 + SIN_COST),
            expect_ldg128=True,
        )

    def bwd_spec(dtype: str, size: int) -> AotSpec:
        return AotSpec(
            name=f"snake_bwd {dtype}",
            kernel=snake._snake_bwd_kernel,
            signature={
                "g_ptr": f"*{dtype}",
                "x_ptr": f"*{dtype}",
                "alpha_ptr": f"*{dtype}",
                "gx_ptr": f"*{dtype}",
                "partial_ptr": "*fp32",
                "stride_gb": "i64",
                "stride_gc": "i64",
                "stride_xb": "i64",
                "stride_xc": "i64",
                "stride_gxb": "i64",
                "stride_gxc": "i64",
                "C": "i32",
                "N": "i32",
                "num_blocks": "i32",
            },
            constexprs={"stride_ac": 1, "BLOCK_N": snake.BLOCK_N},
            aligned=(
                "g_ptr",
                "x_ptr",
                "alpha_ptr",
                "gx_ptr",
                "partial_ptr",
                "stride_gb",
                "stride_gc",
                "stride_xb",
                "stride_xc",
                "stride_gxb",
                "stride_gxc",
                "C",
                "N",
            ),
            num_warps=snake.BWD_NUM_WARPS,
            options={"enable_fp_fusion": False},
            shape=f"x, grad [{B},{C},{N}] {dtype}",
            bytes=3 * ELEMS * size + 4 * B * C * triton.cdiv(N, snake.BLOCK_N),
            flops=ELEMS * (12 + 2 * SIN_COST),
            expect_ldg128=True,
        )

    return [fwd_spec("fp32", 4), fwd_spec("bf16", 2), bwd_spec("fp32", 4)]


SPECS: dict[str, list[AotSpec]] = {
    "merge": _merge(),
    "interleave": _interleave(),
    "attention": _attention(),
    "fsq": _fsq(),
    "bsq": _bsq(),
    "rvq": _rvq(),
    "unmerge": _unmerge(),
    "snake": _snake(),
}
