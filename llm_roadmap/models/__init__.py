"""Components taught in an earlier lesson and reused by later ones."""
