{
 "key": "8c406635d5fd3ff6",
 "signature": "V2BCbYxSgjg3EIU4iQcxjHi7fLbvR06oAsWwFjS1SD7/5lgfAQMsVvzJQJ0SKqTzTC5wwplBka62gpvEBq9PBw=="
}
