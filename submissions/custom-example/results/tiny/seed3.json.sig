{
 "key": "8c406635d5fd3ff6",
 "signature": "VLXVWLbSk7ZlzedPsNTffXJmdBVbv/4ZO1osg0wY+9JvUYH7kVqwV6cxpkiFrUDiJK07MdQ8kdETbvN6BUowCg=="
}
