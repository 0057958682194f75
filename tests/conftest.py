import sys
from pathlib import Path

# tests/reference_stats.py, the independent numpy reference, is imported by name
sys.path.insert(0, str(Path(__file__).parent))
