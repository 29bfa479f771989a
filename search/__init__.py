"""Semantic search over files: a client of the embedding endpoint (``/v1/embeddings``, ours or any OpenAI-compatible
one) with a vector store, a query path, ``POST /v1/search`` (``search.http``), a Streamlit UI (``search.ui``) and the
``search_app`` typer CLI (``search.cli``). Nothing here imports Ray, torch or the serving code; the only pieces of
``orchestrator`` it reads are ``running`` (which service ``up`` runs here), ``config`` and ``model_source`` (where that
service's tokenizer is)."""
