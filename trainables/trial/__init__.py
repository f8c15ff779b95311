"""One Ray Tune trial: the function trainable, what it reports and writes each epoch, a
multi-worker trial through Ray Train, the node it runs on and the test hook that holds it."""
