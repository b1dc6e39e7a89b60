{
 "key": "228cf2f92d6bc34c",
 "signature": "F6ihz2to0i5261cvs7BuYj9bm8uzlJy6AprlZ91h7fh3Yn3xd9bQW0dlTY9Sf92uDriqUgA8IUuv/1vdUZ4uBw=="
}
