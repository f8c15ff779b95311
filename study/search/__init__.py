"""study.search.searcher."""
