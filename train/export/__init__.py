"""After training: merge an adapter into its base (merge.py), write a GGUF file (gguf.py) and an Ollama Modelfile
(ollama.py) for llama.cpp and Ollama, push to the hub (hub.py). `python -m launch merge | export | push` call these."""
