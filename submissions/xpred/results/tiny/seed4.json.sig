{
 "key": "8c406635d5fd3ff6",
 "signature": "k9dwUavV9dJGUItLpx3iZfQsuOo6wiejE9RnnCi2B/R4vNd9mV5aumyULnmwEOZw3bYnET5KRejSo/rvsaxkDw=="
}
