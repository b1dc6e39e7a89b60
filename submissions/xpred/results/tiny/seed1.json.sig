{
 "key": "228cf2f92d6bc34c",
 "signature": "oHLojKHH9H/EfqYdtCUP1yDu0ofF+ZwOjQCYZKidYAjUpcUepLQCGezzcS570Q+0ElUCvurE5QJt2jV9AeqJBA=="
}
