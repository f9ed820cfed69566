"""Existing TEI clients against `gradcache serve`, unchanged.

    python examples/clients/tei_clients.py http://127.0.0.1:3000

Needs `pip install openai huggingface-api-haystack` (docs/serving.md). It
reranks with Haystack's HuggingFaceTEIRanker (POST /rerank), embeds with the
openai client (POST /v1/embeddings, base64 by default), and prints both.
"""

import sys

from haystack import Document
from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker
from openai import OpenAI

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3000"
query = "sorting a list in python"
docs = [
    Document(content="Pythons are non-venomous snakes."),
    Document(content="The built-in sorted() function returns a new sorted list."),
    Document(content="Knead the dough for ten minutes."),
]

# A Haystack pipeline's ranker, pointed at the server as at TEI.
ranker = HuggingFaceTEIRanker(url=url, top_k=3, token=None)
ranked = ranker.run(query=query, documents=docs)["documents"]
print("Haystack HuggingFaceTEIRanker:")
for d in ranked:
    print(f"  {d.score:.4f}  {d.content}")
assert ranked[0].content.startswith("The built-in sorted()"), "the head should rank the sorted() passage first"

# The OpenAI-compatible route, as LangChain's OpenAIEmbeddings calls it.
client = OpenAI(base_url=f"{url}/v1", api_key="unused")
result = client.embeddings.create(model="gradcache", input=[query, docs[1].content])
vectors = [e.embedding for e in result.data]
cosine = sum(a * b for a, b in zip(*vectors))
print(f"openai embeddings: {len(vectors)} x {len(vectors[0])}, cosine(query, passage) = {cosine:.4f}, usage {result.usage.total_tokens} tokens")
