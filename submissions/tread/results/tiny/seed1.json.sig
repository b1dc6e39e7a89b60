{
 "key": "8c406635d5fd3ff6",
 "signature": "GA3E5KoiuUVYgUihMfl+xRo3DEZIYg/T6YAyrJmhdAmXoDgqKtdyXpSV2aJ5oO3J2+pXd/PxZONz6H3fIvX5Aw=="
}
