{
 "key": "228cf2f92d6bc34c",
 "signature": "yw0haPfQIZ0CrzomW05xWkq3pdtNhVH5gGteBqEv2uH2hbueTZisfM+bXnIy0pMsOC5fneuNCNCitX8vokUYDA=="
}
