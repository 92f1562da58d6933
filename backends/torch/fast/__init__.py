"""The torch engine's fast paths: each computes what the plain path computes, faster (``README.md``)."""
