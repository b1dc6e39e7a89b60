{
 "key": "8c406635d5fd3ff6",
 "signature": "PsGkTeNag0ly8cj14Dx0agCkiumk4NCuTr+aojj7YdbLVyAcsTifY0F+tdqhVkYhpIovzR0gvksdXkdskG2IDA=="
}
