{
 "key": "228cf2f92d6bc34c",
 "signature": "WSup36KiUWd+w13qzJ+4IzPvQlSS9gZ+J6kdRFAofjCtXFHAmPp1NKtYAzSU9rtfV4oLeulV8GQjcJwyGFDIBQ=="
}
