"""Wire protocols: the native EchoPanel dialect (and, later, the OpenAI Realtime dialect)."""
