"""Operations: read a fact, decide, and return a Step; the same code path serves check mode."""
