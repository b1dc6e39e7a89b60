{
 "key": "8c406635d5fd3ff6",
 "signature": "PxQcpmtxWu84ZV8tpPvIw/QQbfR5bzL7VEaQNStJGzBZ2Zx+xNRNcxnGBoL5fk2AYjLW5epPkyt2wCdWIHmlCw=="
}
