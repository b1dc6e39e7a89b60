{
 "key": "8c406635d5fd3ff6",
 "signature": "hljY8vfgZBaAsDZWYRtelXccUH9dWOMWZcbdYdMwYzTMilCHJx+9BGGL77d35kIxf3dpfVILOrwKfWhhowI4AQ=="
}
