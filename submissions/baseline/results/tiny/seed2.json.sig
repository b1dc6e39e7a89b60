{
 "key": "228cf2f92d6bc34c",
 "signature": "9vUSLxukUOuCxbJNE+qErKRUKRWUsJgYr6en9t3hUYKNmGRqzOD1nKdqxDLEoSYnWQX/Y4tKi1nRxfk7B5SeCA=="
}
