{
 "key": "8c406635d5fd3ff6",
 "signature": "vRUrlrGG6lcc+8qAPYvBNW7Lcazm9ZZRNJ8I6AxVqSpTn2kWYWBxkefptkw3Tu3WeXgL9+1AqELspaCvO4E6BQ=="
}
