//! Neural models: the student encoder and heads, and the embedded teacher LLM.
