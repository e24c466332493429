"""mpsearch: hardware-aware mixed-precision quantization search, measured with Apache TVM."""

from mpsearch.candidate import Candidate
from mpsearch.errors import MPSearchError

__version__ = "0.1.0"
__all__ = ["Candidate", "MPSearchError", "__version__"]
