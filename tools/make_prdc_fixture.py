"""Write tests/fixtures/prdc_reference.npz: small random features and what the `prdc` package (0.2,
NAVER, MIT) computes for them, so tests/test_prdc.py can check ratlip_cli.metrics.prdc without
depending on prdc or scikit-learn.

Run it in a throwaway environment, never the project's:
    python3 -m venv /tmp/venv-prdc && /tmp/venv-prdc/bin/pip install prdc numpy scikit-learn
    /tmp/venv-prdc/bin/python tools/make_prdc_fixture.py
"""

from pathlib import Path

import numpy as np
from prdc import compute_prdc


def main() -> None:
    rng = np.random.default_rng(27)
    cases = {
        # (real, fake): equal sets of unequal size, a shifted fake set, and a narrower fake set
        "same": (rng.normal(size=(120, 16)), rng.normal(size=(90, 16))),
        "shifted": (rng.normal(size=(100, 16)), rng.normal(loc=0.7, size=(130, 16))),
        "narrow": (rng.normal(size=(110, 24)), 0.4 * rng.normal(size=(70, 24))),
    }
    arrays = {}
    for name, (real, fake) in cases.items():
        real, fake = real.astype(np.float32), fake.astype(np.float32)
        arrays[f"{name}_real"], arrays[f"{name}_fake"] = real, fake
        for k in (3, 5):
            out = compute_prdc(real, fake, nearest_k=k)
            for key, value in out.items():
                arrays[f"{name}_k{k}_{key}"] = np.float64(value)
    path = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "prdc_reference.npz"
    np.savez(path, **arrays)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
