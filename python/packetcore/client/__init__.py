"""The fetch and the follow: connections, the store they fill, repair strategies."""
