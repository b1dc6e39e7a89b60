{
 "key": "228cf2f92d6bc34c",
 "signature": "O+G/moOjmfvZnpWSn+EmmMLXhCc+IIyB4BQL+/yyYqVzgo86rVvtMjT0k4QxCno8wpOUwnWuz6X0h7YsL94rBQ=="
}
