{
 "key": "8c406635d5fd3ff6",
 "signature": "CMjVfAKjj5i8G7jdzPvssqOeQLJXzWfU9rZCSCGHJF5LOZ56tzhoSbZsqOejjPrX0BcgSzygMZBZQ3Zm+CJmAQ=="
}
