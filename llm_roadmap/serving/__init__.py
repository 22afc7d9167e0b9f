"""Services that lessons start as real processes on 127.0.0.1 (phase 9's OpenAI-compatible API and its clients).
Each is taught in a lesson first; this package holds the copy that later lessons and capstones start."""
