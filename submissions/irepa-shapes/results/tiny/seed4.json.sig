{
 "key": "228cf2f92d6bc34c",
 "signature": "xiaLfCXvnkcZlrCmyZzrN4ANlJC9nLS+dZ42G7pmoFZyfaja4mV2rINqOUguhlfhHxlUln6f8H8eIkVPyBNUDg=="
}
