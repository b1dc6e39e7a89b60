{
 "key": "8c406635d5fd3ff6",
 "signature": "c28BSdG9BsMyMNZPckuUDzhfFFkNbK02j2Fb0xE0Ki4VwJGOWIx8ofGZslDVJaoYCRBnKFtTH3du0WzIBK1cBw=="
}
