{
 "key": "8c406635d5fd3ff6",
 "signature": "JmG4XZ7qwItu+kL/NdolvJxEAatn6G58O1wOhVnzHXtWUGdJSpe1eQo96ixlP1fDSGaAFP3nWuHECnKLW3R7AQ=="
}
