"""The local stack: the local AWS (ministack) and the local SageMaker, on 127.0.0.1 only."""
