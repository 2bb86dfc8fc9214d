"""streamrec's stream worker: Kafka in, rolling user state, generative model, Kafka out."""
