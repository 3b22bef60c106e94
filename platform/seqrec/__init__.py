"""seqrec: sequential recommendation on Ray (SDM matching, BST ranking)."""

__version__ = "0.1.0"
