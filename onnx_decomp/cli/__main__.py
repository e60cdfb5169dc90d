"""``python -m onnx_decomp.cli``: the same as the ``onnx-decomp`` console script."""

import sys

from onnx_decomp.cli import main

sys.exit(main())
