"""The image size of every DM-GAN stage, derived from the final size (data.crop_size)."""

from __future__ import annotations

from ratlip_cli.errors import RatlipError

BASE_SIZES = (8, 16, 32, 64)


def stage_sizes(final_size: int, branch_num: int) -> list[int]:
    """[base, 2 * base, ...] ending at ``final_size``; the base must be 8, 16, 32 or 64 (64: the reference)."""
    base = final_size // 2 ** (branch_num - 1)
    if base * 2 ** (branch_num - 1) != final_size or base not in BASE_SIZES:
        raise RatlipError(
            f"DM-GAN with {branch_num} stages cannot make {final_size} px images: the first stage must be one of "
            f"{', '.join(map(str, BASE_SIZES))} px (e.g. data.crop_size=256 for 64/128/256, 64 for 16/32/64)"
        )
    return [base * 2**i for i in range(branch_num)]
