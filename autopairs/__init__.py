"""Automatic pair making: candidates scored by a machine ranker and made into (chosen, rejected) pairs
(``autopairs.autorank``: Tango 2's three strategies), and order contrasts cut from one clip (``autopairs.reorder``)."""
