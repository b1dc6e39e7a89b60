{
 "key": "228cf2f92d6bc34c",
 "signature": "ujsVtooWuas+qF9Y5NwQ9WGnVQKHAim9IquKgIZRC/P5AL+wXyiHKAmGux/KGnfu+Q839v4IosZEERUiX7twAg=="
}
